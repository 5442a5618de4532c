"""register(): its forms, exclusions, registering twice, subclasses, and errors for unregistered objects."""

import pytest
from torch.nn import Module

from torchsystem_trainer.registry import (
    Registry,
    RegistrationError,
    UnregisteredError,
    getarguments,
    getclass,
    gethash,
    getmetadata,
    getname,
    register,
)
from torchsystem_trainer.registry.metadata import REGISTRATION


def make_class(name="Model"):
    calls = []

    def __init__(self, a: int, b: float = 0.5, *, c: str = "c"):
        calls.append((a, b, c))
        self.a, self.b, self.c = a, b, c

    return type(name, (), {"__init__": __init__}), calls


def test_register_returns_the_class_and_captures():
    cls, _ = make_class()
    assert register(cls) is cls
    assert getarguments(cls(1, c="x")) == {"a": 1, "c": "x"}


@pytest.mark.parametrize(
    "decorate, name",
    [
        (lambda cls: register(cls), "Model"),
        (lambda cls: register()(cls), "Model"),
        (lambda cls: register(None)(cls), "Model"),
        (lambda cls: register("Alias")(cls), "Alias"),
        (lambda cls: register(excluded_args=[1])(cls), "Model"),
    ],
    ids=["call", "empty-factory", "none-factory", "named", "exclusions-only"],
)
def test_decorator_forms_return_the_class(decorate, name):
    cls, _ = make_class()
    assert decorate(cls) is cls
    assert getname(cls(1)) == name


def test_excluded_args_apply_whether_the_value_is_passed_by_position_or_keyword():
    cls, _ = make_class()
    register(cls, excluded_args=[0])
    assert getarguments(cls(1, 2.0)) == {"b": 2.0}
    assert getarguments(cls(a=1, b=2.0)) == {"b": 2.0}  # mlregistry would keep 'a' here


def test_excluded_kwargs_apply_whether_the_value_is_passed_by_position_or_keyword():
    cls, _ = make_class()
    register(cls, excluded_kwargs={"b"})
    assert getarguments(cls(1, 2.0, c="z")) == {"a": 1, "c": "z"}
    assert getarguments(cls(1, b=2.0)) == {"a": 1}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"excluded_args": [3]}, r"excluded_args of .*Model holds 3.*valid indexes are 0\.\.2"),
        ({"excluded_kwargs": ["d"]}, r"excluded_kwargs of .*Model holds 'd'.*\['a', 'b', 'c'\]"),
    ],
    ids=["index-out-of-range", "unknown-name"],
)
def test_bad_exclusions_are_rejected_and_leave_the_class_untouched(kwargs, match):
    cls, _ = make_class()
    init = cls.__init__
    with pytest.raises(RegistrationError, match=match):
        register(cls, **kwargs)
    assert cls.__init__ is init


def test_var_keyword_extras_are_captured_sorted_and_excludable():
    @register(excluded_kwargs=["secret"])
    class Flexible:
        def __init__(self, size: int, *layers, **options):
            pass

    flexible = Flexible(3, "x", "y", zeta=1, alpha=2, secret="s")
    assert getarguments(flexible) == {"size": 3, "layers": ("x", "y"), "alpha": 2, "zeta": 1}


def test_registering_twice_wraps_init_once_and_keeps_the_hash():
    cls, calls = make_class()
    register(cls, excluded_args=[1])
    wrapper = cls.__init__
    before = gethash(cls(1, 2.0))

    register(cls, excluded_args=[1])
    register(cls, excluded_kwargs={"b"})  # the same exclusion, spelled by name
    Registry().register(cls, excluded_args=[1])

    assert cls.__init__ is wrapper
    assert not hasattr(wrapper.__wrapped__, REGISTRATION)  # the original, not another wrapper
    calls.clear()
    assert gethash(cls(1, 2.0)) == before
    assert calls == [(1, 2.0, "c")]


@pytest.mark.parametrize(
    "again",
    [{"excluded_args": [0]}, {"name": "Other"}],
    ids=["other-exclusions", "other-name"],
)
def test_registering_again_differently_is_an_error(again):
    cls, _ = make_class()
    register(cls)
    name = again.pop("name", None)
    with pytest.raises(RegistrationError, match=r"already registered with name=None, excluded=\[\]"):
        register(name)(cls) if name else register(cls, **again)


class Base(Module):
    def __init__(self, width: int, depth: int = 1):
        super().__init__()
        self.width, self.depth = width, depth


register(Base)


class Inheriting(Base):  # no __init__ of its own
    pass


class Overriding(Base):
    def __init__(self, width: int, extra: float):
        super().__init__(width, depth=2)
        self.extra = extra


def test_subclass_without_init_inherits_the_registration_under_its_own_name():
    child = Inheriting(4, depth=3)
    assert getarguments(child) == {"width": 4, "depth": 3}
    assert getname(child) == "Inheriting"
    assert gethash(child) != gethash(Base(4, depth=3))


def test_subclass_overriding_init_must_be_registered_itself():
    expected = r"Overriding overrides the __init__ of the registered Base.*register\(Overriding\)"
    with pytest.raises(UnregisteredError, match=expected):
        getarguments(Overriding(4, 0.5))

    class Registered(Overriding):
        def __init__(self, width: int, extra: float):
            super().__init__(width, extra)

    register(Registered)
    assert getarguments(Registered(4, extra=0.5)) == {"width": 4, "extra": 0.5}  # not the base's (4, depth=2)


def test_named_registration_name_is_not_inherited():
    @register("Alias")
    class Named:
        def __init__(self, n: int):
            pass

    class Child(Named):
        pass

    assert getname(Named(1)) == "Alias"
    assert getname(Child(1)) == "Child"


def test_unregistered_objects_raise_a_type_error_naming_the_class():
    class Plain:
        pass

    for accessor in (getarguments, gethash, getmetadata, getclass):
        with pytest.raises(UnregisteredError, match=r"Plain is not registered: call register\(Plain\)") as info:
            accessor(Plain())
        assert isinstance(info.value, TypeError)
    assert getname(Plain()) == "Plain"  # as in mlregistry, getname needs no registration


def test_unregistered_error_is_not_swallowed_by_a_module_property():
    class Unregistered(Module):
        pass

    class Aggregate(Module):
        def __init__(self):
            super().__init__()
            self.nn = Unregistered()

        @property
        def id(self):  # the seed's aggregates do this
            return gethash(self.nn)

    with pytest.raises(UnregisteredError, match="Unregistered is not registered"):
        Aggregate().id


def test_instance_created_before_registration_is_explained():
    cls, _ = make_class("Late")
    early = cls(1)
    register(cls)
    with pytest.raises(UnregisteredError, match="created before register"):
        getarguments(early)


def test_getclass_returns_the_class_to_rebuild_from():
    cls, _ = make_class()
    register(cls)
    obj = cls(1, c="x")
    rebuilt = getclass(obj)(**getarguments(obj))
    assert gethash(rebuilt) == gethash(obj)


def test_non_class_is_rejected():
    with pytest.raises(TypeError, match="register expects a class, a name"):
        register(42)
