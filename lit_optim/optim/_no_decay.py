"""No-weight-decay rules: which parameters are excluded from weight decay, found in one walk of the module."""

from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from lit_optim._validation import closest_match

__all__ = ["NoDecayRule", "Walk", "check_rules_matched", "split_rules"]

#: A no-decay rule: a module class (all its parameters, submodules' included), a submodule instance (its
#: parameters), an fnmatch glob or a compiled regex on the full parameter name, or a predicate
#: ``(name, parameter) -> bool``.
NoDecayRule = type[nn.Module] | nn.Module | str | re.Pattern[str] | Callable[[str, nn.Parameter], bool]

_NORM_NAME = re.compile(r"Norm(\d+d)?$")
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_COMPILED = "_orig_mod."  # the attribute torch.compile's OptimizedModule keeps the original module under
_DATA_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)
_type_cache: dict[type[nn.Module], tuple[bool, bool]] = {}


def _type_flags(cls: type[nn.Module]) -> tuple[bool, bool]:
    """(is a normalization layer, declares ``no_weight_decay`` or ``no_weight_decay_keywords``), cached per class."""
    flags = _type_cache.get(cls)
    if flags is None:
        is_norm = any(_NORM_NAME.search(base.__name__) for base in cls.__mro__)
        declares = any(callable(getattr(cls, method, None)) for method in _DECLARING)
        flags = _type_cache[cls] = (is_norm, declares)
    return flags


#: timm's ``no_weight_decay()`` (names) and microsoft/Swin-Transformer's ``no_weight_decay_keywords()`` (a
#: parameter whose name contains one, e.g. its 2-D ``relative_position_bias_table``).
_DECLARING = ("no_weight_decay", "no_weight_decay_keywords")


def _declared(module: nn.Module, prefix: str) -> list[str]:
    """Full names and globs a module declares as no-decay, under its prefix."""
    names = [prefix + str(name) for name in getattr(module, "no_weight_decay", list)()]
    keywords: Iterable[object] = getattr(module, "no_weight_decay_keywords", list)()
    return names + [f"{prefix}*{glob.escape(str(keyword))}*" for keyword in keywords]


class Walk:
    """Every distinct parameter of a module (by identity) with its names and no-decay flag."""

    def __init__(self, module: nn.Module, decay_embeddings: bool, ruled: set[int]) -> None:
        self.params: list[nn.Parameter] = []
        self.names: list[str] = []
        self.no_decay: list[bool] = []
        self.aliases: dict[int, list[str]] = {}  # index -> later names of a tied parameter
        self.declared: list[str] = []  # full names/globs from `no_weight_decay()` methods
        seen: dict[int, int] = {}
        wrapped = isinstance(module, _DATA_PARALLEL)  # its parameters are all named `module.<name>`
        # Every path of a shared module instance, so globs and declared names can use any of them.
        for module_name, mod in module.named_modules(remove_duplicate=False):
            own = mod._parameters
            is_norm, declares = _type_flags(type(mod))
            prefix = module_name + "." if module_name else ""
            if declares:
                self.declared.extend(_declared(mod, prefix))
            if not own:
                continue
            module_flag = is_norm or (not decay_embeddings and isinstance(mod, _EMBEDDING_TYPES))
            for leaf, param in own.items():
                if param is None:
                    continue
                if type(param) is not nn.Parameter and isinstance(param, nn.parameter.UninitializedParameter):
                    raise ValueError(
                        f"Parameter {prefix + leaf!r} of {type(mod).__name__} is not initialized yet (a lazy module), "
                        "so its shape and decay rule are unknown. HINT: run one forward pass before grouping."
                    )
                flag = module_flag or param.ndim <= 1 or leaf.endswith("bias") or leaf.startswith("bias_")
                flag = flag or id(param) in ruled
                index = seen.get(id(param))
                if index is not None:  # tied: keep the first name; no decay if any occurrence says so
                    self.aliases.setdefault(index, []).append(prefix + leaf)
                    self.no_decay[index] = self.no_decay[index] or flag
                else:
                    index = seen[id(param)] = len(self.params)
                    self.params.append(param)
                    self.names.append(prefix + leaf)
                    self.no_decay.append(flag)
                if wrapped or _COMPILED in prefix:  # patterns may leave out the wrappers' `module.`/`_orig_mod.`
                    bare = (prefix + leaf).replace(_COMPILED, "")
                    self.aliases.setdefault(index, []).append(bare[len("module.") :] if wrapped else bare)

    def all_names(self, index: int) -> list[str]:
        return [self.names[index], *self.aliases.get(index, ())]

    def apply_name_rules(self, rules: list[Callable[[str, nn.Parameter], bool]]) -> None:
        declared_exact = {name for name in self.declared if not any(c in name for c in "*?[")}
        globs = [re.compile(fnmatch.translate(name)) for name in self.declared if name not in declared_exact]
        if globs:
            rules = [*rules, lambda name, _: any(g.match(name) for g in globs)]
        for index, flag in enumerate(self.no_decay):
            if flag:
                continue
            names = self.all_names(index)
            if any(name in declared_exact for name in names) or any(
                rule(name, self.params[index]) for rule in rules for name in names
            ):
                self.no_decay[index] = True


def _regex_rule(regex: re.Pattern[str], full: bool) -> Callable[[str, nn.Parameter], bool]:
    def rule(name: str, _: nn.Parameter) -> bool:
        return (regex.match(name) if full else regex.search(name)) is not None

    return rule


_RULE_TYPES = "nn.Module subclasses, submodules, glob strings, compiled regexes or callables (name, parameter) -> bool"


def split_rules(
    rules: Iterable[NoDecayRule], module: nn.Module
) -> tuple[set[int], list[Callable[[str, nn.Parameter], bool]], list[tuple[str, re.Pattern[str], bool]]]:
    """Parameter ids ruled by module classes and instances, the name predicates, and the patterns to check.

    Raises:
        TypeError: for a bare rule (a string is not a list of rules) or a rule of the wrong type.
        ValueError: for a module class that no submodule is, or a module instance outside ``module``.
    """
    if isinstance(rules, (str, re.Pattern, nn.Module, type)) or (callable(rules) and not isinstance(rules, Iterable)):
        fix = f"[{rules!r}]" if isinstance(rules, str) else "[rule]"
        why = " (a string would be read character by character)" if isinstance(rules, str) else ""
        raise TypeError(
            f"`no_decay` must be a list of rules, got the single rule {rules!r} ({type(rules).__name__}){why}. "
            f"HINT: wrap it in a list: no_decay={fix}."
        )
    if not isinstance(rules, Iterable):
        raise TypeError(f"`no_decay` must be a list of {_RULE_TYPES}, got {rules!r} ({type(rules).__name__}).")
    ruled: set[int] = set()
    predicates: list[Callable[[str, nn.Parameter], bool]] = []
    patterns: list[tuple[str, re.Pattern[str], bool]] = []  # (as written, regex, full match)
    for rule in rules:
        if isinstance(rule, type) and issubclass(rule, nn.Module):
            found = [m for m in module.modules() if isinstance(m, rule)]
            if not found:
                raise ValueError(
                    f"`no_decay` rule {rule.__name__} matches no module of {type(module).__name__}. "
                    "HINT: remove it, or check the class (a rule class covers its instances' parameters)."
                )
            ruled |= {id(p) for m in found for p in m.parameters()}  # submodules' parameters included
        elif isinstance(rule, nn.Module):
            if not any(m is rule for m in module.modules()):
                raise ValueError(
                    f"`no_decay` rule {type(rule).__name__} (a module instance) is not a submodule of "
                    f"{type(module).__name__}. HINT: pass a submodule of this model, its class, or a glob."
                )
            ruled |= {id(p) for p in rule.parameters()}
        elif isinstance(rule, str):
            regex = re.compile(fnmatch.translate(rule))
            predicates.append(_regex_rule(regex, full=True))
            patterns.append((repr(rule), regex, True))
        elif isinstance(rule, re.Pattern):
            predicates.append(_regex_rule(rule, full=False))
            patterns.append((f"re.compile({rule.pattern!r})", rule, False))
        elif callable(rule) and not isinstance(rule, type):
            predicates.append(rule)
        else:
            raise TypeError(f"Each `no_decay` rule must be one of {_RULE_TYPES}, got {rule!r} ({type(rule).__name__}).")
    return ruled, predicates, patterns


def check_rules_matched(patterns: Sequence[tuple[str, re.Pattern[str], bool]], walk: Walk) -> None:
    """Raise for a glob or regex ``no_decay`` rule that matches no parameter name (a typo excludes nothing)."""
    if not patterns:
        return
    names = [n for i in range(len(walk.names)) for n in walk.all_names(i)]
    for shown, regex, full in patterns:
        if not any((regex.match(n) if full else regex.search(n)) for n in names):
            close = closest_match(shown.strip("'"), names)
            suggestion = f" Did you mean {close!r}?" if close else ""
            raise ValueError(
                f"`no_decay` rule {shown} matched no parameter. Parameters look like: "
                f"{', '.join(repr(n) for n in walk.names[:3])}, ...{suggestion} HINT: globs match full parameter "
                "names (e.g. '*.pos_embed'); regexes are searched anywhere in the name."
            )
