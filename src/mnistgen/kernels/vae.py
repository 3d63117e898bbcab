"""One VAE training step on CPU with mnistgen's C kernels (``vae_cpu.c``) and PyTorch's matrix multiply.

:class:`NativeVAEStep` holds the parameters of a :class:`mnistgen.models.vae.VAE`, their gradients and Adam's two
moments as four flat buffers of one layout, and the activations of one batch. In a step (:meth:`compute_gradients`),
C runs the forward to h2 = tanh(z Wd^T + bd) (the encoder's product as sums over the images' nonzero pixels),
PyTorch the logits h2 Wo^T + bo, C log p(x|z) and dL/dlogits, PyTorch Wo's gradient and dL/dh2, C the rest of the
backward pass and the ELBO; then C runs PyTorch's Adam over the flat buffers (:meth:`adam_step`). :meth:`elbo` runs
the forward alone: each image's ELBO, for the evaluation of the weights held in the buffers.

The mathematics is :func:`mnistgen.accelerate.vae.elbo_with_gradients` then PyTorch's Adam, up to the order of
float32 additions; :meth:`NativeVAEStep.store` writes the optimizer's state in PyTorch's format. The C structs are
mirrored with ctypes (``LAYOUT``); every buffer passes :func:`~mnistgen.kernels.native.checked_pointer` before its
address goes to C: the struct's once, x, eps and Adam's at every call.
"""

from __future__ import annotations

import ctypes
import math

import torch

from ..errors import MnistgenError
from ..models.vae import VAE
from .native import check_tensor, checked_pointer, load_vae_library
from .native import kernel_threads as _threads

_P = ctypes.c_void_p


class _Buffers(ctypes.Structure):
    """The C struct VAEBuffers (same fields, same order)."""

    _fields_ = [(name, ctypes.c_long) for name in ("pixels", "hidden", "latent", "capacity")] + [
        (name, _P) for name in (
            "enc_wt", "enc_b", "mean_w", "mean_b", "logvar_w", "logvar_b", "dec_w", "dec_b", "out_w", "out_b", "dec_wt",
            "g_enc_wt", "g_enc_b", "g_mean_w", "g_mean_b", "g_logvar_w", "g_logvar_b", "g_dec_w", "g_dec_b", "g_out_b",
            "h1", "mean", "logvar", "std", "z", "h2", "logits", "d_logits", "d_h2", "d_a1", "d_mean", "d_logvar",
            "row_elbo", "image_count", "image_pixel", "image_value", "pixel_count", "pixel_image", "pixel_value")]


class _AdamStep(ctypes.Structure):
    """The C struct AdamStep: the scalars of one step of PyTorch's Adam."""

    _fields_ = [(name, ctypes.c_float) for name in ("beta1", "beta2", "step_size", "bias_correction2_sqrt", "eps")]


def struct_layout(struct: type[ctypes.Structure], c_name: str) -> dict[str, int]:
    """A ctypes struct's size and offsets, named as the library reports them: "offsetof(VAEBuffers, pixels)"."""
    layout = {f"sizeof({c_name})": ctypes.sizeof(struct)}
    layout |= {f"offsetof({c_name}, {name})": getattr(struct, name).offset for name, _ in struct._fields_}
    return layout


LAYOUT = {**struct_layout(_Buffers, "VAEBuffers"), **struct_layout(_AdamStep, "AdamStep")}


def _parameter_slots(model: VAE) -> list[tuple[str, torch.nn.Parameter, bool]]:
    """(name in the C struct, the model's parameter, stored transposed?) in the flat buffers' order."""
    encoder, decoder = model.encoder, model.decoder
    return [("enc_wt", encoder.hidden.weight, True), ("enc_b", encoder.hidden.bias, False),
            ("mean_w", encoder.mean.weight, False), ("mean_b", encoder.mean.bias, False),
            ("logvar_w", encoder.logvar.weight, False), ("logvar_b", encoder.logvar.bias, False),
            ("dec_w", decoder.hidden.weight, False), ("dec_b", decoder.hidden.bias, False),
            ("out_w", decoder.output.weight, False), ("out_b", decoder.output.bias, False)]


def _c_shapes(pixels: int, hidden: int, latent: int, capacity: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of each buffer of VAEBuffers, by field name, as the C kernels read it."""
    D, H, Z, B = pixels, hidden, latent, capacity
    f32, i32 = torch.float32, torch.int32
    parameters = {"enc_wt": (D, H), "enc_b": (H,), "mean_w": (Z, H), "mean_b": (Z,), "logvar_w": (Z, H),
                  "logvar_b": (Z,), "dec_w": (H, Z), "dec_b": (H,), "out_w": (D, H), "out_b": (D,)}
    activations = {"dec_wt": (Z, H), "h1": (B, H), "mean": (B, Z), "logvar": (B, Z), "std": (B, Z), "z": (B, Z),
                   "h2": (B, H), "logits": (B, D), "d_logits": (B, D), "d_h2": (B, H), "d_a1": (B, H),
                   "d_mean": (B, Z), "d_logvar": (B, Z), "image_value": (B, D), "pixel_value": (D, B)}
    shapes = {name: (shape, f32) for name, shape in (parameters | activations).items()}
    shapes |= {"g_" + name: (shape, f32) for name, shape in parameters.items()}
    shapes |= {"row_elbo": ((B,), torch.float64), "image_count": ((B,), i32), "image_pixel": ((B, D), i32),
               "pixel_count": ((D,), i32), "pixel_image": ((D, B), i32)}
    return shapes


def _check(status: int, what: str) -> None:
    if status != 0:  # the kernels check their sizes; NativeVAEStep checks them first, so this is a bug
        raise RuntimeError(f"{what}: the C kernel refused its arguments (status {status})")


class NativeVAEStep:
    """The state of training ``model`` on CPU by the C kernels, for batches of at most ``capacity`` images; the
    weights live in the flat buffers between :meth:`load` and :meth:`store`."""

    def __init__(self, model: VAE, capacity: int):
        self.model = model
        self.library = load_vae_library()  # raises NativeKernelsUnavailable (one line) where it cannot be built
        pixels, hidden, latent = model.encoder.hidden.in_features, model.encoder.hidden.out_features, model.latent_dim
        c_shapes = _c_shapes(pixels, hidden, latent, capacity)
        slots = _parameter_slots(model)
        names = {id(parameter): name for name, parameter in model.named_parameters()}
        for name, parameter, _ in slots:  # float32, and each layer's size as the C code reads it for D, H, Z
            check_tensor(parameter, f"the VAE's {names.get(id(parameter), name)}", math.prod(c_shapes[name][0]),
                         contiguous=False)
        total = self._parameter_count = sum(parameter.numel() for _, parameter, _ in slots)
        # four flat buffers of one layout: parameters, gradients, Adam's first and second moments
        self.parameters, self.gradients = torch.zeros(total), torch.zeros(total)
        self.exp_avg, self.exp_avg_sq = torch.zeros(total), torch.zeros(total)
        self.adam_steps = 0
        self._views: list[tuple[torch.nn.Parameter, bool, slice, tuple[int, ...]]] = []
        fields, offset = {}, 0
        for name, parameter, transposed in slots:
            shape = tuple(parameter.t().shape if transposed else parameter.shape)
            where = slice(offset, offset + parameter.numel())
            self._views.append((parameter, transposed, where, shape))
            fields[name] = self.parameters[where]
            fields["g_" + name] = self.gradients[where]
            offset += parameter.numel()
        self.out_weight = fields["out_w"].view(pixels, hidden)  # (D, H) Wo
        self.out_bias = fields["out_b"]
        self.out_weight_gradient = fields.pop("g_out_w").view(pixels, hidden)  # not in the struct: PyTorch writes it

        self.capacity = capacity
        for name in c_shapes.keys() - fields.keys() - {"g_out_w"}:  # the activations of one batch (self.h1, ...)
            shape, dtype = c_shapes[name]
            fields[name] = torch.empty(shape, dtype=dtype)
            setattr(self, name, fields[name])
        pointer_fields = {name for name, kind in _Buffers._fields_ if kind is _P}
        if set(fields) != pointer_fields:  # a NULL the C code would write through
            raise AssertionError(f"the buffers given differ from VAEBuffers' pointers: {set(fields) ^ pointer_fields}")
        # each buffer checked once, as its address goes into the struct, and kept alive as long as the struct
        pointers = {}
        for name, tensor in fields.items():
            shape, dtype = c_shapes[name]
            pointers[name] = checked_pointer(tensor, f"VAE buffers: {name}", math.prod(shape), dtype)
        self._struct_tensors = tuple(fields.values())
        self._buffers = _Buffers(pixels=pixels, hidden=hidden, latent=latent, capacity=capacity, **pointers)
        self._buffers_address = ctypes.addressof(self._buffers)
        self._elbo = ctypes.c_float()

    def load(self, optimizer: torch.optim.Adam) -> None:
        """Copy the model's weights and the moments and step count of its optimizer into the flat buffers."""
        groups = optimizer.param_groups
        if len(groups) != 1 or [id(p) for p in groups[0]["params"]] != [id(p) for p in self.model.parameters()]:
            raise MnistgenError("the C kernels' Adam needs one parameter group holding the model's parameters")
        if groups[0].get("weight_decay", 0) or groups[0].get("amsgrad") or groups[0].get("maximize"):
            raise MnistgenError("the C kernels' Adam has no weight decay, amsgrad or maximize")
        steps = set()
        for parameter, transposed, where, shape in self._views:
            self.parameters[where].view(shape).copy_(parameter.detach().t() if transposed else parameter.detach())
            state = optimizer.state.get(parameter, {})
            for flat, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
                moment = state.get(key)
                if moment is None:
                    flat[where].zero_()
                else:
                    flat[where].view(shape).copy_(moment.t() if transposed else moment)
            steps.add(int(state["step"]) if "step" in state else 0)
        if len(steps) != 1:
            raise MnistgenError(f"the optimizer's parameters have taken different numbers of steps: {sorted(steps)}")
        self.adam_steps = steps.pop()

    def store(self, optimizer: torch.optim.Adam) -> None:
        """Copy the weights and Adam's state back into the model and its optimizer (PyTorch's state format)."""
        with torch.no_grad():
            for parameter, transposed, where, shape in self._views:
                values = self.parameters[where].view(shape)
                parameter.copy_(values.t() if transposed else values)
                if self.adam_steps == 0:
                    continue
                state = optimizer.state[parameter]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["step"].fill_(self.adam_steps)
                for flat, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
                    moment = flat[where].view(shape)
                    state[key].copy_(moment.t() if transposed else moment)

    def parameter_gradients(self) -> list[torch.Tensor]:
        """The gradients of the last :meth:`compute_gradients`, in the model's parameters' order and shapes (copies)."""
        gradients = []
        for _, transposed, where, shape in self._views:
            flat = self.gradients[where].view(shape)
            gradients.append((flat.t() if transposed else flat).clone())
        return gradients

    def _forward(self, x: torch.Tensor, eps: torch.Tensor, scale: float) -> tuple[int, int]:
        """The C forward, the logits and the C output pass (each image's log p(x|z) into ``row_elbo``, dL/dlogits times
        ``scale``) on x and eps (see :meth:`compute_gradients`); returns B and eps' address."""
        batch = x.shape[0]
        if batch > self.capacity:
            raise ValueError(f"a batch of {batch} images exceeds the capacity of {self.capacity}")
        x_pointer = checked_pointer(x, "VAE step: x", batch * self._buffers.pixels)  # (B, D) float32, contiguous
        eps_pointer = checked_pointer(eps, "VAE step: eps", batch * self._buffers.latent)  # (B, Z)
        library, address, threads = self.library, self._buffers_address, _threads()
        _check(library.mnistgen_vae_forward(address, x_pointer, eps_pointer, batch, threads), "VAE forward")
        torch.addmm(self.out_bias, self.h2[:batch], self.out_weight.t(), out=self.logits[:batch])  # (B, D)
        library.mnistgen_vae_output(address, x_pointer, batch, scale, threads)
        return batch, eps_pointer

    def compute_gradients(self, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool) -> float:
        """Fill ``self.gradients`` with those of loss = -mean ELBO of the batch; return the batch's ELBO sum. x (B, D)
        float32 images (any values: the sums skip the zeros only); eps (B, D_z): z = mean + std eps."""
        batch, eps_pointer = self._forward(x, eps, 1.0 / x.shape[0])
        h2, d_logits = self.h2[:batch], self.d_logits[:batch]
        torch.mm(d_logits.t(), h2, out=self.out_weight_gradient)  # (D, H)
        torch.mm(d_logits, self.out_weight, out=self.d_h2[:batch])  # (B, H)
        _check(self.library.mnistgen_vae_backward(self._buffers_address, eps_pointer, batch, 1.0 / batch,
                                                  int(analytic_kl), ctypes.byref(self._elbo), _threads()),
               "VAE backward")
        return self._elbo.value

    def elbo(self, x: torch.Tensor, eps: torch.Tensor, analytic_kl: bool) -> torch.Tensor:
        """Each image's ELBO estimate as :meth:`compute_gradients` sums them, by the forward alone: (B,) float64.
        Changes no parameter, gradient or moment but the output bias's gradient."""
        batch, _ = self._forward(x, eps, 0.0)
        mean, logvar, z = (getattr(self, name)[:batch].double() for name in ("mean", "logvar", "z"))
        prior = (0.5 * (logvar + 1.0 - mean.square() - logvar.exp()) if analytic_kl else
                 0.5 * (eps.double().square() + logvar - z.square()))  # the backward's log p(z) - log q(z|x), or -KL
        return self.row_elbo[:batch] + prior.sum(1)

    def adam_step(self, lr: float, betas: tuple[float, float], eps: float) -> None:
        """One Adam step of every parameter with ``self.gradients`` (PyTorch's Adam, no weight decay)."""
        count = self._parameter_count
        buffers = [checked_pointer(getattr(self, name), f"Adam: {name}", count)
                   for name in ("parameters", "gradients", "exp_avg", "exp_avg_sq")]
        self.adam_steps += 1
        beta1, beta2 = betas
        adam = _AdamStep(beta1=beta1, beta2=beta2, step_size=lr / (1.0 - beta1 ** self.adam_steps),
                         bias_correction2_sqrt=math.sqrt(1.0 - beta2 ** self.adam_steps), eps=eps)
        self.library.mnistgen_adam(*buffers, count, ctypes.byref(adam), _threads())
