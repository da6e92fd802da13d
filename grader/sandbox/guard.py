"""The autograd guard: while it is active, grad mode is off and every public way into autograd raises.

Answer cells run under it (`Runner`), so a student who calls `.backward()`, `torch.autograd.grad`,
`torch.func.grad` or switches grad mode back on gets `AutogradRefused` with a sentence saying why,
instead of a gradient the grader would then mistake for a hand-written one. It is not a security
boundary (student code can undo anything in its own process); the grader also checks each answer for
a graph behind it (`Runner.record`).

Runs in the child: it imports only `sys` and the torch submodules it patches (torch is passed in).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from torch import Tensor, no_grad

REFUSED = "autograd is not allowed in this exercise: write the gradient by hand"


class AutogradRefused(RuntimeError):
    """Raised in place of every autograd entry point while student code runs."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise AutogradRefused(REFUSED)


def _autograd_patches(torch: ModuleType) -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) for every public way into autograd."""

    def set_grad_enabled(mode: bool) -> no_grad:
        if mode:
            _refuse()
        return torch.no_grad()

    def requires_grad_(self: Tensor, requires_grad: bool = True) -> Tensor:
        if requires_grad:
            _refuse()
        return self

    # torch's own entry points to autograd, loaded before they are wrapped (the guard is built in the worker,
    # where torch is imported; importing them at the top would import torch wherever this module is read)
    import torch.autograd.forward_ad
    import torch.autograd.functional  # (see above)
    import torch.func  # (see above)

    set_grad_mode = torch._C._set_grad_enabled

    def private_set_grad_enabled(mode: bool) -> None:
        if mode:
            _refuse()
        return set_grad_mode(False)

    patches: list[tuple[object, str, object]] = [
        (torch._C, "_set_grad_enabled", private_set_grad_enabled),  # what torch.set_grad_enabled calls
        (torch._C, "_ImperativeEngine", _refuse),  # autograd's engine, behind every backward
        (torch.Tensor, "backward", _refuse),
        (torch.Tensor, "retain_grad", _refuse),
        (torch.Tensor, "requires_grad_", requires_grad_),
        (torch.autograd, "backward", _refuse),
        (torch.autograd, "grad", _refuse),
        (torch, "enable_grad", _refuse),
        (torch.autograd, "enable_grad", _refuse),
        (torch.autograd.grad_mode, "enable_grad", _refuse),
        (torch, "set_grad_enabled", set_grad_enabled),
        (torch.autograd, "set_grad_enabled", set_grad_enabled),
        (torch.autograd.grad_mode, "set_grad_enabled", set_grad_enabled),
    ]
    for name in ("jacobian", "hessian", "vjp", "jvp", "hvp", "vhp"):
        patches.append((torch.autograd.functional, name, _refuse))
    # forward-mode AD does not need grad mode; unpack_dual stays: printing a tensor calls it
    for name in ("dual_level", "make_dual"):
        patches.append((torch.autograd.forward_ad, name, _refuse))
    for name in ("grad", "grad_and_value", "vjp", "jvp", "jacrev", "jacfwd", "hessian", "linearize"):
        for module in (
            torch.func,
            sys.modules.get("torch._functorch.apis"),
            sys.modules.get("torch._functorch.eager_transforms"),
        ):
            if module is not None and hasattr(module, name):
                patches.append((module, name, _refuse))
    return patches


class Guard:
    """While active: grad mode off and every public autograd entry point raises `AutogradRefused`."""

    def __init__(self, torch: ModuleType) -> None:
        self.torch = torch
        self.patches = _autograd_patches(torch)
        self.originals = [(owner, name, getattr(owner, name)) for owner, name, _ in self.patches]
        self.depth = 0

    def __enter__(self) -> None:
        self.depth += 1
        if self.depth == 1:
            self.grad_was = self.torch.is_grad_enabled()
            self.torch.set_grad_enabled(False)
            for owner, name, replacement in self.patches:
                setattr(owner, name, replacement)

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            for owner, name, original in self.originals:
                setattr(owner, name, original)
            self.torch._C._set_grad_enabled(self.grad_was)
