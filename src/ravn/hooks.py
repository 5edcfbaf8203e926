"""Layer input/output capture with forward hooks: the one place ravn reads what happens inside a model.

- :class:`Capture` keeps the outputs (or inputs) of named modules for every forward pass while it is
  open; outputs keep their autograd graph unless ``detach`` (fine-tuning needs the graph).
- :func:`stream`: named modules' outputs (or inputs) handed to a function chunk by chunk and not kept
  (the fidelity loss and the roundings' Hessians: memory bounded by one chunk of one layer).
- :func:`stream_cuts`: like :func:`stream`, for one change at a time: the float forward pass is walked
  node by node (``torch.fx``) and, at each named module, the rest of the pass can be run from there
  on with that module changed (what each layer's sensitivity probe needs: the features before the
  layer are the float ones, so only the rest of the network runs).
- :func:`walk_inputs`: one pass, and before each named module runs, its input in every chunk, with the
  module changed from then on (sequential reconstruction: each layer rounded against the inputs the
  layers before it, already rounded, give it).
- :func:`input_of`: the input one module receives; the forward pass stops right there.
Hooks are always removed, also when the forward pass raises.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
from torch import nn

from ravn.data.splits import images_per_batch
from ravn.device import to_model


class Capture:
    """Keeps the output (``inputs=False``) or first input of each named module of ``model`` (a context)."""

    def __init__(self, model: nn.Module, names: list[str], inputs: bool = False, detach: bool = False):
        modules = dict(model.named_modules())
        self.names = list(names)
        self.store: dict[str, torch.Tensor] = {}

        def keep(name: str, value: torch.Tensor) -> None:
            self.store[name] = value.detach() if detach else value

        if inputs:
            self.handles = [modules[n].register_forward_pre_hook(lambda _m, args, n=n: keep(n, args[0]))
                            for n in self.names]
        else:
            self.handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: keep(n, out))
                            for n in self.names]

    def take(self) -> list[torch.Tensor]:
        """The captured tensors in the order of ``names``; the store is emptied."""
        out = [self.store[n] for n in self.names]
        self.store.clear()
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _Stop(Exception):
    pass


def _chunks(x: torch.Tensor):
    """``(number, rows)`` of each chunk of ``x`` a streamed pass runs: :func:`~ravn.data.splits.images_per_batch`
    images each (a tensor without spatial axes: one chunk)."""
    rows = images_per_batch(x.shape[1:]) if x.dim() > 1 else len(x)
    for chunk, start in enumerate(range(0, len(x), rows)):
        yield chunk, x[start : start + rows]


@torch.no_grad()
def stream(model: nn.Module, names: list[str], x: torch.Tensor, fn: Callable[[str, torch.Tensor, int], None],
           inputs: bool = False, stop: bool = False) -> None:
    """Run ``model`` on ``x`` in chunks of :func:`~ravn.data.splits.images_per_batch` rows and call
    ``fn(name, value, chunk)`` with each named module's output (or first input) on chunk number ``chunk``;
    nothing is kept here, so a consumer that reduces what it gets (a Hessian ``X^T X``, a distance) holds
    one chunk of one layer's activations at a time. ``stop``: each chunk's forward pass stops once every
    named module has been seen (inputs of early layers only). ``x`` of one chunk is one forward pass.
    """
    modules = dict(model.named_modules())
    seen: set[str] = set()
    state = {"chunk": 0}

    def hook(name: str, value: torch.Tensor) -> None:
        fn(name, value.detach(), state["chunk"])
        seen.add(name)
        if stop and len(seen) == len(names):
            raise _Stop

    if inputs:
        handles = [modules[n].register_forward_pre_hook(lambda _m, args, n=n: hook(n, args[0])) for n in names]
    else:
        handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: hook(n, out)) for n in names]
    try:
        for state["chunk"], part in _chunks(x):
            seen.clear()
            with contextlib.suppress(_Stop):
                model(to_model(model, part))
    finally:
        for h in handles:
            h.remove()


_walks = [True]  # False within no_walks()


@contextlib.contextmanager
def no_walks():
    """Within it every model counts as one ``torch.fx`` cannot walk, so :func:`stream_cuts` and
    :func:`walk_inputs` return False and their callers take the fallback (a pass per cut or per layer): to
    time both ways, or to test the fallback on a model that walks."""
    _walks.append(False)
    try:
        yield
    finally:
        _walks.pop()


class _Walk:
    """A model's ``torch.fx`` graph, stepped node by node on an environment of live values (freed after
    their last use), for models this can walk: see :meth:`of`."""

    def __init__(self, graph, model: nn.Module):
        import torch.fx

        self.model = model
        self.nodes = list(graph.graph.nodes)
        self.last_use: dict = {}
        for i, node in enumerate(self.nodes):
            for used in node.all_input_nodes:
                self.last_use[used] = i
        self.interpreter = torch.fx.Interpreter(graph)
        self.end = next(i for i, node in enumerate(self.nodes) if node.op == "output")

    @classmethod
    def of(cls, model: nn.Module, names: list[str], x: torch.Tensor) -> _Walk | None:
        """The walk of ``model``, or None for one ``torch.fx`` cannot trace (data-dependent control flow),
        with other than one input, or calling a named module more than once, never (it runs inside a module
        fx keeps whole, e.g. ``nn.TransformerEncoder``'s linear layers, or not at all) or on other than a
        value of the pass (a change to it would then reach the pass elsewhere than from that node on), or
        whose graph does not compute what the model does on two images of ``x`` (a module that traces one
        branch of its forward, as :class:`ravn.models.attention.SplitAttention` traces its batched one)."""
        import torch.fx

        if not _walks[-1]:
            return None
        wanted = set(names)
        try:
            graph = torch.fx.symbolic_trace(model)
        except Exception:  # whatever fx cannot trace is run whole by the caller
            return None
        nodes = list(graph.graph.nodes)
        calls = [n for n in nodes if n.op == "call_module" and n.target in wanted]
        if (len(calls) != len(wanted) or {n.target for n in calls} != wanted
                or [n.op for n in nodes].count("placeholder") != 1
                or nodes[0].op != "placeholder" or not all(n.args and isinstance(n.args[0], torch.fx.Node)
                                                           for n in calls)):
            return None
        return cls(graph, model) if _same_outputs(graph, model, to_model(model, x[:2])) else None

    def start(self, x: torch.Tensor) -> dict:
        return {self.nodes[0]: to_model(self.model, x)}

    def step(self, env: dict, i: int) -> None:
        """Run node ``i`` on ``env``; values no later node reads are freed."""
        self.interpreter.env = env
        env[self.nodes[i]] = self.interpreter.run_node(self.nodes[i])
        for used in self.nodes[i].all_input_nodes:
            if self.last_use[used] == i:
                del env[used]

    def named(self, i: int, names: set[str]) -> str | None:
        """The name of node ``i``'s module when it is one of ``names``."""
        node = self.nodes[i]
        return node.target if node.op == "call_module" and node.target in names else None


def _same_outputs(graph: nn.Module, model: nn.Module, x: torch.Tensor) -> bool:
    """Does the traced ``graph`` give ``model``'s outputs on ``x`` (to float rounding; an error: no)."""
    from torch.utils._pytree import tree_leaves

    try:
        with torch.no_grad():
            ours, theirs = tree_leaves(graph(x)), tree_leaves(model(x))
    except Exception:  # a branch the trace took that these inputs do not (its assert) fails here
        return False
    return len(ours) == len(theirs) and all(_close(a, b) for a, b in zip(ours, theirs, strict=True))


def _close(a, b) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return type(a) is type(b) and a == b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.float(), b.float()
    return b.numel() == 0 or torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(b.abs().max())))


@torch.no_grad()
def stream_cuts(model: nn.Module, names: list[str], x: torch.Tensor, fn: Callable[[str, torch.Tensor, int], None],
                visit: Callable[[str, Callable[[], None]], None]) -> bool:
    """Walk ``model``'s forward pass on ``x`` once per chunk (the chunks of :func:`stream`), node by node
    of its ``torch.fx`` graph, and before each named module runs call ``visit(name, rest)``. ``rest()``
    runs the pass from that module to the end on a copy of the values live there (so whatever ``visit``
    changes in the module, e.g. its weight, is seen by it and by what follows, and the walk itself stays
    float), calling ``fn(name, output, chunk)`` with each named module's output, as :func:`stream` does;
    the walk itself calls ``fn`` with nothing. Values no later node reads are freed as the walk and each
    rest proceed, so memory is that of one forward pass of a chunk (plus the copied cut).

    Returns False, having run none of it, for a model this cannot walk (:meth:`_Walk.of`); the caller then
    runs the whole pass per change."""
    walk = _Walk.of(model, names, x)
    if walk is None:
        return False
    wanted = set(names)
    state = {"chunk": 0, "rest": False}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: fn(n, out.detach(), state["chunk"]) if state["rest"] else None) for n in names]

    def rest(env: dict, start: int) -> None:
        copy = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in env.items()}
        state["rest"] = True
        try:
            for i in range(start, walk.end):
                walk.step(copy, i)
        finally:
            state["rest"] = False

    try:
        for state["chunk"], part in _chunks(x):
            env = walk.start(part)
            for i in range(1, walk.end):
                if (name := walk.named(i, wanted)) is not None:
                    visit(name, functools.partial(rest, env, i))
                walk.step(env, i)
    finally:
        for h in handles:
            h.remove()
    return True


@torch.no_grad()
def walk_inputs(model: nn.Module, names: list[str], x: torch.Tensor,
                visit: Callable[[str, list[torch.Tensor]], None]) -> bool:
    """Run ``model`` on ``x`` once, the chunks of :func:`stream` stepped together node by node of its
    ``torch.fx`` graph, and before each named module runs call ``visit(name, inputs)`` with that module's
    input in every chunk, in chunk order. What ``visit`` changes in the module (its weight) is what the
    module and everything after it compute with: sequential reconstruction in one pass instead of one
    pass per layer up to it, each chunk's values exactly those of a pass that stops at the module. The
    pass ends at the last named module. Memory: the values live at one node, of every chunk.

    Returns False, having run none of it, for a model this cannot walk (:meth:`_Walk.of`)."""
    walk = _Walk.of(model, names, x)
    if walk is None:
        return False
    left = set(names)
    envs = [walk.start(part) for _, part in _chunks(x)]
    for i in range(1, walk.end):
        if not left:
            break
        if (name := walk.named(i, left)) is not None:
            visit(name, [env[walk.nodes[i].args[0]] for env in envs])
            left.discard(name)
        for env in envs:
            walk.step(env, i)
    return True


@torch.no_grad()
def input_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input ``layer`` receives when ``model`` runs on ``x`` (the forward stops right there)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        store["x"] = args[0].detach()
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(to_model(model, x))
    except _Stop:
        pass
    finally:
        handle.remove()
    if "x" not in store:
        raise RuntimeError("the layer was not reached in the forward pass")
    return store["x"]
