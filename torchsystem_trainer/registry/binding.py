"""Binding constructor calls to constructor signatures.

A :class:`Binder` is built once per registered class, at registration. At each instantiation it turns the
``(args, kwargs)`` of the call into the ordered ``{parameter name: value}`` dictionary that becomes the object's
captured arguments. The call has already been accepted by Python (the wrapper binds only what ``__init__``
accepts), so binding needs no validation: positional values fill the positional parameters in order, keywords
fill the parameters they name, and whatever is left goes to ``*args`` / ``**kwargs``.

Ordering follows the signature, not the call. mlregistry 1.2.3 keeps the call's order (positional values first,
then keywords as written), so the same call written with its keywords in another order, or with a value passed
by keyword instead of by position, hashes differently there. Here it does not. For the usual call, positional
values followed by keywords in signature order (the seed's ``MLP(784, 256, 10, dropout=0.5,
activation=ReLU())``), both orders are the same and so are the hashes.

Defaults that were not passed are not captured, as in mlregistry 1.2.3: ``Foo(1)`` and ``Foo(1, t='5')`` are
different calls and get different hashes even when ``'5'`` is the default of ``t``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torchsystem_trainer.registry.errors import RegistrationError

__all__ = ["Binder", "annotation_name"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def annotation_name(annotation: Any) -> str:
    """Describe a parameter annotation the way mlregistry 1.2.3 does: its ``__name__``, or ``'Any'`` if absent.

    Beyond mlregistry, which fails on annotations without a ``__name__``: a string annotation (``from
    __future__ import annotations``) is returned as written, and anything else (``float | Tensor``) as ``str``.

    Args:
        annotation: ``inspect.Parameter.annotation``.

    Returns:
        ``'int'`` for ``int``, ``'Module'`` for ``torch.nn.Module``, ``'Any'`` for a missing annotation.

    Raises:
        Nothing.
    """
    if annotation is inspect.Parameter.empty:
        return "Any"
    if isinstance(annotation, str):
        return annotation
    name = getattr(annotation, "__name__", None)
    return name if isinstance(name, str) else str(annotation)


@dataclass(frozen=True, slots=True)
class Binder:
    """The parameters of one constructor, prepared for cheap binding.

    Attributes:
        parameters: every parameter after ``self``, in signature order, with its annotation.
        positional: the names positional values fill, in order.
        keyword: the names a keyword argument can fill.
        var_positional: the name of ``*args``, if any.
        var_keyword: the name of ``**kwargs``, if any.
        excluded: the parameter (or ``**kwargs`` key) names never captured.
    """

    parameters: tuple[inspect.Parameter, ...]
    positional: tuple[str, ...]
    keyword: frozenset[str]
    var_positional: str | None
    var_keyword: str | None
    excluded: frozenset[str]

    @classmethod
    def from_init(
        cls,
        init: Callable[..., Any],
        owner: str,
        excluded_args: Iterable[int] = (),
        excluded_kwargs: Iterable[str] = (),
    ) -> Binder:
        """Build the binder of a class's ``__init__``.

        Args:
            init: the original ``__init__`` (``self`` first).
            owner: the class name, for error messages.
            excluded_args: indexes into the parameters after ``self``, as in mlregistry 1.2.3's
                ``excluded_args``. Resolved here to names, so a parameter excluded by index stays excluded when
                it is passed by keyword (mlregistry only drops it when it is passed positionally).
            excluded_kwargs: parameter names, as in mlregistry 1.2.3's ``excluded_kwargs``; likewise excluded
                however they are passed. Where the constructor takes ``**kwargs``, any name is accepted.

        Returns:
            The binder.

        Raises:
            RegistrationError: when the signature cannot be read, an index is out of range, or a name is not a
                parameter (the message lists the parameters).
        """
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError) as error:
            raise RegistrationError(f"cannot read the signature of {owner}.__init__: {error}") from error
        parameters = list(signature.parameters.values())
        if parameters and parameters[0].kind in _POSITIONAL:
            parameters = parameters[1:]  # self
        names = [p.name for p in parameters]
        var_positional = next((p.name for p in parameters if p.kind is p.VAR_POSITIONAL), None)
        var_keyword = next((p.name for p in parameters if p.kind is p.VAR_KEYWORD), None)

        excluded: set[str] = set()
        for index in excluded_args:
            if not isinstance(index, int) or not 0 <= index < len(names):
                raise RegistrationError(
                    f"excluded_args of {owner} holds {index!r}, which is not a parameter index; "
                    f"valid indexes are 0..{len(names) - 1} for {names}"
                )
            excluded.add(names[index])
        for name in excluded_kwargs:
            if name not in names and var_keyword is None:
                raise RegistrationError(
                    f"excluded_kwargs of {owner} holds {name!r}, which is not a parameter; valid names are {names}"
                )
            excluded.add(name)

        return cls(
            parameters=tuple(parameters),
            positional=tuple(p.name for p in parameters if p.kind in _POSITIONAL),
            keyword=frozenset(p.name for p in parameters if p.kind in _KEYWORD),
            var_positional=var_positional,
            var_keyword=var_keyword,
            excluded=frozenset(excluded),
        )

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Name the values of an accepted call, in signature order, without the excluded ones.

        Args:
            args: the positional values after ``self``.
            kwargs: the keyword values.

        Returns:
            ``{name: value}``: named parameters in signature order; then ``*args`` (as a tuple, only when it
            received values); then the extra keywords of ``**kwargs``, sorted by key.

        Raises:
            Nothing: the call was accepted by ``__init__``.
        """
        bound = dict(zip(self.positional, args, strict=False))  # args may be fewer (defaults) or more (*args)
        extras: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in self.keyword:
                bound[key] = value
            else:
                extras[key] = value
        excluded = self.excluded
        named: dict[str, Any] = {}
        for parameter in self.parameters:
            name = parameter.name
            if name in bound and name not in excluded:
                named[name] = bound[name]
        leftover = args[len(self.positional) :]
        if leftover and self.var_positional is not None and self.var_positional not in excluded:
            named[self.var_positional] = tuple(leftover)
        for key in sorted(extras):
            if key not in excluded:
                named[key] = extras[key]
        return named

    def signature(self) -> dict[str, str]:
        """The registered signature, as mlregistry 1.2.3's ``Registry.signature`` reports it.

        Returns:
            ``{parameter name: annotation name}`` in signature order, without the excluded parameters.

        Raises:
            Nothing.
        """
        return {
            p.name: annotation_name(p.annotation) for p in self.parameters if p.name not in self.excluded
        }
