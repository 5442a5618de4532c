"""Example applications built on torchsystem_trainer."""
