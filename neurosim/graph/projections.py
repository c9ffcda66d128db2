"""Projections (synapses): source activity -> a named compartment of a target population.

A projection contributes ``gain * W r_src`` to its target compartment's potential (or, when the
compartment is "soma", directly as a current). ``W`` has shape (target.size, source.size).
Weights are created by an initialiser named in ``init``:

- "xavier_uniform": U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010);
  "xavier_normal": N(0, 2 / (fan_in + fan_out))
- "he_uniform": U(-a, a), a = sqrt(6 / fan_in); "kaiming_normal": N(0, 2 / fan_in);
  "fan_in_uniform": U(-a, a), a = 1 / sqrt(fan_in) (PyTorch's default for nn.Linear)
- "gram_xavier": M M^T with M an n x n Xavier-uniform matrix (a random SPD matrix; needs
  source == target), as CorInfoMax initialises its lateral matrices B
- "normal": N(0, scale^2); "uniform": U(-scale, scale); "zeros"; "ones" (fixed fan-in sum)
- "eye": scale * I, a learnable identity matrix (needs source == target size; e.g. COPI's
  decorrelating lateral matrices R, initialised to I)
- "identity": structural autapses ``r_src -> same neuron``, no weight tensor (never plastic)
- a registered or imported ("module:function") initialiser (see ``INITIALISERS``)
- an explicit tensor / nested list of shape (target.size, source.size),
- or a file holding one: ``{ file = "W.npy" }`` or ``{ file = "weights.h5", dataset = "W" }``
  (relative to the model file's directory; read when the network is compiled, so the model
  file stays small: neurosim.io.arrays).
Every random initialiser is multiplied by ``scale``.

``precision`` sets the arithmetic of the projection's product in ODE phases (a dense weight
between dynamic populations of linear cells, e.g. a large recurrent or lateral matrix):
"full" (the default: the network's dtype), "bfloat16" (weights and activities rounded to
bfloat16, about 3 significant digits, products accumulated in float32; about twice as fast
where the CPU has bfloat16 instructions) or "auto" (bfloat16 for a weight of at least 128 x 128
entries on a float32 network where the CPU has native bfloat16 arithmetic, AVX512-BF16 or AMX,
else full). Meant for terms that are
small against the others (CorInfoMax's lateral ``2 gamma B r``, gamma ~ 1e-5), whose bfloat16
error stays below the float32 rounding of the potentials; plasticity rules and recorded
dendritic potentials always use full precision.

``refresh_every = k`` (default 1) holds the same kind of product over k steps: in ODE phases
stepped by "euler" or "gs-euler", ``W r_src`` is recomputed at steps 0, k, 2k, ... of a
phase (counted from its start; a solve resumed elsewhere recomputes at its first step) and
the value of the last refresh is used in between (a multirate Euler step). Meant, like
bfloat16, for slow terms that are small against the others: CorInfoMax's lateral term moves
u by about 1e-5 per phase, and holding it for 4 steps changes the potentials by at most about
4e-8, 1/30 of their float32 rounding (measured in float64 on a trained MNIST network:
runs/README.md). A population's projections in bfloat16 or
with ``refresh_every`` > 1 share one operator (see neurosim.dynamics.compiled): they must
have one precision and one ``refresh_every``. Other solvers refuse it.

An optional fixed ``mask`` zeroes absent synapses; plasticity never creates them. It is a 0/1
tensor of the weight's shape, "no_self" (every synapse but i -> i; a square projection, e.g.
lateral connections without autapses) or ``{ partners = k }`` (each target neuron gets exactly
k presynaptic partners drawn at random without replacement, never itself when source ==
target; drawn from the network's initialisation generator). ``rules`` are plasticity hooks
(see neurosim.plasticity) run after each training step.

Kinds (``type`` in a ``[[projection]]`` table; ``PROJECTION_KINDS``): "dense" (the default,
above) and two kinds with a spatial layout, whose source activity is read as images of shape
``in_shape = [C, H, W]`` (channels first, row-major, as the flattened columns of r):

- "conv2d": ``W r`` becomes the cross-correlation ``(K * r)[k, i, j] = sum_{c, a, b}
  K[k, c, a, b] r[c, s i + a - p, s j + b - p]`` with a kernel K of shape (channels, C, kh, kw),
  stride s and zero padding p (torch.nn.functional.conv2d); the target has channels x H' x W'
  neurons, H' = (H + 2p - kh) // s + 1. Initialisers see K as a channels x (C kh kw) matrix
  (he_uniform's fan-in is C kh kw). A rule's outer product post x pre becomes the patch-wise
  outer product summed over the batch and averaged over the H' W' output positions.
- "maxpool2d": ``max_{a, b < k} r[c, s i + a, s j + b]`` over k x k windows (stride s = k by
  default); no weights, never plastic.

Both run in feed-forward passes (PEPITA, backpropagation) and, from input populations, as
constant inputs of ODE phases; an ODE phase does not integrate them from dynamic sources. In
an ensemble (activities M x batch x n, kernels M x channels x C x kh x kw) convolutions run
member by member, each member's call that of its separate run.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as nnf

from ..errors import ConfigError, did_you_mean
from ..io.arrays import ArrayFile, is_array_file
from ..registry import Registry, model_directory
from .populations import SOMA


def _uniform(bound):
    def init(n_post, n_pre, generator, dtype, scale):
        a = bound(n_post, n_pre) * scale
        return (torch.rand((n_post, n_pre), generator=generator, dtype=dtype) * 2 - 1) * a
    return init


def _normal(std):
    def init(n_post, n_pre, generator, dtype, scale):
        sigma = std(n_post, n_pre) * scale
        return torch.randn((n_post, n_pre), generator=generator, dtype=dtype) * sigma
    return init


def _gram_xavier(n_post, n_pre, generator, dtype, scale):
    bound = math.sqrt(6.0 / (2 * n_pre))
    m = (torch.rand((n_pre, n_pre), generator=generator, dtype=dtype) * 2 - 1) * bound
    return (m @ m.T) * scale


#: name -> init(n_post, n_pre, generator, dtype, scale) -> (n_post, n_pre) tensor.
#: Register your own with ``INITIALISERS.register(name="mine")(function)`` or name a function
#: "package.module:function" in a model file.
INITIALISERS = Registry("initialiser")
INITIALISERS.register(_uniform(lambda o, i: math.sqrt(6.0 / (i + o))), name="xavier_uniform")
INITIALISERS.register(_normal(lambda o, i: math.sqrt(2.0 / (i + o))), name="xavier_normal")
INITIALISERS.register(_uniform(lambda o, i: math.sqrt(6.0 / i)), name="he_uniform")
INITIALISERS.register(_normal(lambda o, i: math.sqrt(2.0 / i)), name="kaiming_normal")
INITIALISERS.register(_uniform(lambda o, i: 1.0 / math.sqrt(i)), name="fan_in_uniform")
INITIALISERS.register(_gram_xavier, name="gram_xavier")
INITIALISERS.register(_normal(lambda o, i: 1.0), name="normal")
INITIALISERS.register(_uniform(lambda o, i: 1.0), name="uniform")
INITIALISERS.register(lambda o, i, g, dtype, scale: torch.zeros((o, i), dtype=dtype), name="zeros")
INITIALISERS.register(lambda o, i, g, dtype, scale: torch.full((o, i), float(scale), dtype=dtype),
                      name="ones")
INITIALISERS.register(lambda o, i, g, dtype, scale: None, name="identity")


def _eye(n_post, n_pre, generator, dtype, scale):
    if n_post != n_pre:
        raise ConfigError(f'init "eye" builds a square matrix; source and target sizes differ '
                          f"({n_pre} vs {n_post}).")
    return torch.eye(n_post, dtype=dtype) * scale


INITIALISERS.register(_eye, name="eye")


#: arithmetic of a projection's product in ODE phases (see the module docstring)
PRECISIONS = ("full", "bfloat16", "auto")


@dataclass
class Projection:
    """A synaptic pathway ``source -> target.compartment`` with weight ``W`` and ``gain``: it
    adds ``gain * W r_src`` to the compartment's potential v_c (to the soma current for
    "soma"); W is (target.size x source.size), created by ``init`` times ``scale``."""

    name: str
    source: str
    target: str
    compartment: str = SOMA
    init: Any = "xavier_uniform"
    gain: float = 1.0
    scale: float = 1.0
    mask: Any = None
    plastic: bool = True
    rules: Sequence[Any] = field(default_factory=list)
    precision: str = "full"
    refresh_every: int = 1

    def __post_init__(self):
        where = f'projection "{self.name}"'
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"projection name {self.name!r} must be an identifier.")
        if is_array_file(self.init):
            self.init = ArrayFile.from_table(self.init, f"{where} init", model_directory())
        if self.has_weight and isinstance(self.init, str) and ":" not in self.init and \
                self.init not in INITIALISERS:
            raise ConfigError(f'{where}: unknown init "{self.init}".'
                              f"{did_you_mean(self.init, INITIALISERS)} "
                              f"Valid initialisers: {', '.join(INITIALISERS)}, "
                              "'module:function', a matrix, or a file { file = \"W.npy\" }.")
        for key in ("gain", "scale"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}.")
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{self.precision!r}.{did_you_mean(str(self.precision), PRECISIONS)}")
        if self.precision == "bfloat16" and not (self.is_dense and self.has_weight):
            raise ConfigError(f'{where}: precision "bfloat16" applies to the product of a dense '
                              f"weight matrix; this {self.kind} projection (init "
                              f"{self.init!r}) has none. Remove precision.")
        if not isinstance(self.refresh_every, numbers.Integral) or \
                isinstance(self.refresh_every, bool) or self.refresh_every < 1:
            raise ConfigError(f"{where}: refresh_every must be a whole number of steps >= 1, "
                              f"got {self.refresh_every!r}.")
        self.refresh_every = int(self.refresh_every)
        if self.refresh_every > 1 and not (self.is_dense and self.has_weight):
            raise ConfigError(f"{where}: refresh_every applies to the product of a dense "
                              f"weight matrix; this {self.kind} projection (init "
                              f"{self.init!r}) has none. Remove refresh_every.")
        if not self.has_weight:
            self.plastic = False
        if not self.is_dense and self.mask is not None:
            raise ConfigError(f'{where}: a {self.kind} projection takes no mask (its '
                              "connectivity is the kernel's); remove mask.")
        from ..plasticity import build_rule      # rules import the graph: imported late
        self.rules = [build_rule(spec, f"{where} rules[{j}]")
                      for j, spec in enumerate(self.rules)]
        for rule in self.rules:
            if not self.is_dense and not getattr(rule, "spatial", False):
                raise ConfigError(f'{where}: rule "{rule.name}" works on dense weight matrices '
                                  f"and this is a {self.kind} projection; use a rule that "
                                  "supports kernels (e.g. \"pepita\") or a dense projection.")
        if self.rules and not self.plastic:
            raise ConfigError(f"{where}: has plasticity rules but is not plastic "
                              f"(init={self.init!r}, plastic={self.plastic}). "
                              "Remove the rules or make the projection plastic.")

    kind = "dense"

    @property
    def is_dense(self) -> bool:
        """Whether ``W r`` is a matrix product with a (target x source) matrix W (or, for an
        identity projection, r itself)."""
        return True

    @property
    def has_weight(self) -> bool:
        """Whether the projection owns a weight tensor (not identity or pooling)."""
        return not self.is_identity

    def weight_shape(self, n_post: int, n_pre: int) -> tuple[int, ...]:
        """Shape of the weight tensor: (target size, source size) for a dense projection."""
        return (n_post, n_pre)

    def check_sizes(self, n_post: int, n_pre: int) -> None:
        """ConfigError unless the source and target sizes suit this projection."""
        if self.is_identity and n_post != n_pre:
            raise ConfigError(f'projection "{self.name}": init "identity" needs equal sizes, but '
                              f'source "{self.source}" has {n_pre} and target "{self.target}" '
                              f"has {n_post} neurons.")

    def drive(self, r: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """``W r`` for a batch of source activities (batch x source -> batch x target; a
        leading ensemble-member axis allowed); an identity projection returns r."""
        if weight is None:
            return r
        if r.dim() == 2 and weight.dim() == 2:
            return r.mm(weight.T)
        from ..dynamics import ops                 # the graph is imported by dynamics
        return ops.matmul(r, weight.mT)

    def outer(self, post: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """``sum_b post_b pre_b^T`` over the batch, shaped like the weights: the term every
        Hebbian-type rule is made of (per member in an ensemble: M x n_post x n_pre)."""
        if post.dim() == 2 and pre.dim() == 2:
            return post.T.mm(pre)
        from ..dynamics import ops                 # the graph is imported by dynamics
        return ops.matmul(post.mT, pre)

    def add_outer_(self, out: torch.Tensor, post: torch.Tensor, pre: torch.Tensor,
                   alpha: float = 1.0) -> torch.Tensor:
        """``out += alpha * outer(post, pre)`` in place (one fused product when dense; a
        leading ensemble-member axis allowed)."""
        if out.dim() == 2:
            return out.addmm_(post.T, pre, alpha=alpha)
        from ..dynamics import ops                 # the graph is imported by dynamics
        return ops.addmm_(out, post.mT, pre, alpha=alpha)

    @property
    def is_identity(self) -> bool:
        """Whether this is a structural ``init = "identity"`` projection (``r_src`` onto the
        same neuron, no weight tensor, never plastic)."""
        return isinstance(self.init, str) and self.init == "identity"

    def initial_weight(self, n_post: int, n_pre: int, generator: torch.Generator,
                       dtype=torch.float64) -> torch.Tensor | None:
        """Create the initial weight (None for structural identity projections)."""
        if not self.has_weight:
            return None
        shape = self.weight_shape(n_post, n_pre)
        init = self.init
        if isinstance(init, ArrayFile):
            where = f'projection "{self.name}" init'
            if init.shape(where) != shape:
                raise ConfigError(f'projection "{self.name}": {init} has shape '
                                  f"{init.shape(where)} but {self.target} x {self.source} needs "
                                  f"{shape}.")
            weight = torch.as_tensor(init.load(where)).to(dtype)
            self._check_finite(weight, f"init (file {init})")
            return weight
        if not isinstance(init, str):
            try:
                weight = torch.as_tensor(init, dtype=dtype)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ConfigError(f'projection "{self.name}": init is not a numeric array of '
                                  f"shape {shape} ({err}).") from None
            if tuple(weight.shape) != shape:
                raise ConfigError(f'projection "{self.name}": weight has shape '
                                  f"{tuple(weight.shape)} but {self.target} x {self.source} "
                                  f"needs {shape}.")
            self._check_finite(weight, "init (explicit weights)")
            return weight.clone()
        initialise = INITIALISERS.lookup(init, f'projection "{self.name}" init')
        rows, cols = shape[0], math.prod(shape[1:])
        try:
            weight = initialise(rows, cols, generator, dtype, self.scale)
        except (MemoryError, RuntimeError) as err:
            from ..sizing import format_bytes, is_allocation_error
            if not is_allocation_error(err):
                raise
            nbytes = rows * cols * torch.empty(0, dtype=dtype).element_size()
            raise ConfigError(f'projection "{self.name}" needs {rows} x {cols} '
                              f"{str(dtype).removeprefix('torch.')} weights = "
                              f"{format_bytes(nbytes)} while it is initialised, more than this "
                              f"machine could allocate; make populations \"{self.target}\" or "
                              f'"{self.source}" smaller.') from None
        if weight is not None and tuple(weight.shape) != (rows, cols):
            raise ConfigError(f'projection "{self.name}": initialiser "{init}" returned shape '
                              f"{tuple(weight.shape)}, needs {(rows, cols)}.")
        if weight is not None:
            self._check_finite(weight, f'initialiser "{init}" (scale {self.scale})')
            weight = weight.reshape(shape)
        return weight

    def _check_finite(self, weight: torch.Tensor, what: str) -> None:
        bad = ~torch.isfinite(weight)
        if bool(bad.any()):
            index = tuple(int(k) for k in bad.nonzero()[0])
            raise ConfigError(f'projection "{self.name}": {what} gave weight '
                              f"{list(index)} = {float(weight[index])!r}; weights must be "
                              "finite numbers.")

    def initial_mask(self, n_post: int, n_pre: int,
                     generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The fixed connectivity mask as a float 0/1 tensor, or None. A ``{ partners = k }``
        mask is drawn from ``generator`` (a fixed one when None, to check the settings)."""
        if self.mask is None:
            return None
        where = f'projection "{self.name}"'
        autapses = self.source == self.target
        if isinstance(self.mask, str):
            if self.mask != "no_self":
                raise ConfigError(f'{where}: mask "{self.mask}" is unknown; give "no_self", '
                                  "{ partners = k } or a 0/1 matrix of shape "
                                  f"{(n_post, n_pre)}.")
            if n_post != n_pre:
                raise ConfigError(f'{where}: mask "no_self" needs a square projection, got '
                                  f"{n_post} x {n_pre}.")
            return 1.0 - torch.eye(n_post, dtype=torch.float64)
        if isinstance(self.mask, dict):
            return self._partner_mask(n_post, n_pre, generator, autapses, where)
        mask = torch.as_tensor(self.mask)
        if tuple(mask.shape) != (n_post, n_pre):
            raise ConfigError(f'projection "{self.name}": mask has shape {tuple(mask.shape)}, '
                              f"needs {(n_post, n_pre)} (target size x source size).")
        if not torch.all((mask == 0) | (mask == 1)):
            raise ConfigError(f'projection "{self.name}": mask entries must be 0 or 1.')
        return mask.to(torch.float64)

    def _partner_mask(self, n_post, n_pre, generator, autapses, where) -> torch.Tensor:
        """Each row: exactly k ones at random columns (not the diagonal when source ==
        target)."""
        unknown_keys = sorted(set(self.mask) - {"partners"})
        if unknown_keys:
            raise ConfigError(f"{where}: mask table has unknown keys {unknown_keys}; write "
                              "mask = { partners = k }.")
        k = self.mask.get("partners")
        available = n_pre - 1 if autapses else n_pre
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
            raise ConfigError(f"{where}: mask partners must be an integer in 1..{available} "
                              f"(the possible presynaptic partners of each neuron), got {k!r}.")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        scores = torch.rand(n_post, available, generator=generator, dtype=torch.float64)
        chosen = scores.argsort(dim=1)[:, :k]
        if autapses:            # columns 0..n-2 skip the row's own index
            rows = torch.arange(n_post).unsqueeze(1)
            chosen = chosen + (chosen >= rows).long()
        mask = torch.zeros(n_post, n_pre, dtype=torch.float64)
        mask.scatter_(1, chosen, 1.0)
        return mask


def _pair(value, key: str, where: str, minimum: int) -> tuple[int, int]:
    """An int or a [height, width] pair of ints >= minimum."""
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum
                              for v in items):
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum} or a pair [height, "
                          f"width] of them, got {value!r}.")
    return items[0], items[1]


@dataclass
class _Spatial(Projection):
    """Shared by the spatial kinds: the source read as images ``in_shape = [C, H, W]``."""

    in_shape: Sequence[int] = ()
    kernel: Any = 2
    stride: Any = None
    padding: Any = 0

    def __post_init__(self):
        where = f'projection "{self.name}" ({self.kind})'
        shape = list(self.in_shape) if isinstance(self.in_shape, (list, tuple)) else []
        if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                  for v in shape):
            raise ConfigError(f"{where}: in_shape must be [channels, height, width] of the "
                              f"source activity (positive integers), got {self.in_shape!r}.")
        self.in_shape = tuple(shape)
        self.kernel = _pair(self.kernel, "kernel", where, 1)
        self.stride = self.kernel if self.stride is None and self.kind == "maxpool2d" else \
            _pair(1 if self.stride is None else self.stride, "stride", where, 1)
        self.padding = _pair(self.padding, "padding", where, 0)
        _, height, width = self.in_shape
        if self.kind == "maxpool2d" and any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ConfigError(f"{where}: padding {list(self.padding)} exceeds half the kernel "
                              f"{list(self.kernel)}.")
        if any(size + 2 * p < k for size, p, k in zip((height, width), self.padding, self.kernel)):
            raise ConfigError(f"{where}: kernel {list(self.kernel)} is larger than the padded "
                              f"image {height} x {width} (padding {list(self.padding)}).")
        super().__post_init__()

    @property
    def is_dense(self) -> bool:
        """False: a spatial operator, not a matrix product."""
        return False

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(channels, H', W') of the target, H' = (H + 2 p - k) // s + 1."""
        _, height, width = self.in_shape
        spatial = tuple((size + 2 * p - k) // s + 1 for size, p, k, s in
                        zip((height, width), self.padding, self.kernel, self.stride))
        return (self._out_channels(), *spatial)

    def _out_channels(self) -> int:
        return self.in_shape[0]

    def check_sizes(self, n_post: int, n_pre: int) -> None:
        """The source must hold ``in_shape`` and the target ``out_shape`` neurons."""
        where = f'projection "{self.name}" ({self.kind})'
        need_pre, need_post = math.prod(self.in_shape), math.prod(self.out_shape)
        if n_pre != need_pre:
            raise ConfigError(f'{where}: in_shape {list(self.in_shape)} holds {need_pre} '
                              f'neurons but source "{self.source}" has {n_pre}.')
        if n_post != need_post:
            raise ConfigError(f'{where}: its output has shape {list(self.out_shape)} = '
                              f'{need_post} neurons but target "{self.target}" has {n_post}; '
                              f"give the target size = {need_post}.")

    def _images(self, r: torch.Tensor) -> torch.Tensor:
        return r.reshape(r.shape[0], *self.in_shape)


@dataclass
class Conv2dProjection(_Spatial):
    """A convolution (cross-correlation) ``K * r`` with kernel K (channels x C x kh x kw),
    stride and zero padding; see the module docstring."""

    kind = "conv2d"
    channels: int = 1
    kernel: Any = None
    stride: Any = 1

    def __post_init__(self):
        if self.kernel is None:
            raise ConfigError(f'projection "{self.name}" (conv2d): give the kernel size, e.g. '
                              "kernel = 5 or kernel = [5, 3].")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or \
                self.channels < 1:
            raise ConfigError(f'projection "{self.name}" (conv2d): channels must be a positive '
                              f"integer (the number of output feature maps), got "
                              f"{self.channels!r}.")
        if self.is_identity:
            raise ConfigError(f'projection "{self.name}" (conv2d): init "identity" gives no '
                              "kernel; give an initialiser (e.g. \"he_uniform\") or a kernel of "
                              "shape [channels, C, kh, kw].")
        super().__post_init__()

    def _out_channels(self) -> int:
        return self.channels

    def weight_shape(self, n_post: int, n_pre: int) -> tuple[int, ...]:
        """(channels, C, kh, kw)."""
        return (self.channels, self.in_shape[0], *self.kernel)

    def drive(self, r: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """``K * r`` flattened to (batch, channels H' W'); in an ensemble (K: M x channels x
        C x kh x kw; r: M x batch x n, or batch x n shared by the members) member by member
        (each member's call that of its separate run; faster here than one grouped
        convolution with its transposed copies), (M, batch, channels H' W')."""
        if weight.dim() == 5:
            return torch.stack([self.drive(r[m] if r.dim() == 3 else r, weight[m])
                                for m in range(weight.shape[0])])
        return nnf.conv2d(self._images(r), weight, stride=self.stride,
                          padding=self.padding).flatten(1)

    def outer(self, post: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """``sum_b mean_{i, j} post_b[k, i, j] patch_b[i, j]``: the patch-wise outer product
        (patch: the kh x kw input window under output position (i, j)), summed over the batch
        and averaged over the H' W' output positions (per member in an ensemble: M x
        channels x C x kh x kw)."""
        if post.dim() == 3:
            return torch.stack([self.outer(post[m], pre[m] if pre.dim() == 3 else pre)
                                for m in range(post.shape[0])])
        _, height, width = self.out_shape
        total = torch.nn.grad.conv2d_weight(
            self._images(pre), self.weight_shape(0, 0),
            post.reshape(post.shape[0], *self.out_shape), stride=self.stride,
            padding=self.padding)
        return total.div_(height * width)

    def add_outer_(self, out: torch.Tensor, post: torch.Tensor, pre: torch.Tensor,
                   alpha=1.0) -> torch.Tensor:
        """``out += alpha * outer(post, pre)`` (``alpha`` a number, or one per member)."""
        outer = self.outer(post, pre)
        if isinstance(alpha, torch.Tensor) and alpha.dim() > 0:
            return out.add_(outer.mul_(alpha.to(outer).reshape(-1, *[1] * (outer.dim() - 1))))
        return out.add_(outer, alpha=alpha)


@dataclass
class MaxPool2dProjection(_Spatial):
    """Max-pooling over kernel windows (stride = kernel unless given); no weights."""

    kind = "maxpool2d"
    init: Any = "none"

    @property
    def has_weight(self) -> bool:
        """False: pooling has no weights."""
        return False

    def drive(self, r: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """The window maxima, flattened to (batch, C H' W') (an ensemble's (M, batch, n)
        give (M, batch, C H' W'))."""
        pooled = nnf.max_pool2d(r.reshape(-1, *self.in_shape), self.kernel, self.stride,
                                self.padding)
        return pooled.reshape(*r.shape[:-1], -1)


#: ``type`` of a [[projection]] table -> class. Register a kind of your own with
#: ``PROJECTION_KINDS.register(MyProjection, name="mine")``.
PROJECTION_KINDS = Registry("projection kind", base=Projection)
PROJECTION_KINDS.register(Projection, name="dense")
PROJECTION_KINDS.register(Conv2dProjection, name="conv2d")
PROJECTION_KINDS.register(MaxPool2dProjection, name="maxpool2d")
