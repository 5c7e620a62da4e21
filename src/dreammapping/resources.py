"""Sizes with a ceiling: one memory estimate for each thing a command allocates in proportion to a user's number,
checked against the memory there is before any of it is allocated, and caps on what is read from user-named files.

The estimates are deliberately simple models (bytes per rendered pixel, per Gaussian, per voxel), calibrated on this
code's CPU paths (`python benchmarks/memory_estimate.py`: about 2× what was measured); they over-estimate rather
than under-estimate, and their
job is to turn `--resolution 10000` into a one-line refusal instead of minutes of swapping and an OOM kill, not to
predict usage to the megabyte. The refusal names the value, the estimate and the limit.
"""

from __future__ import annotations

import os

from dreammapping.errors import ConfigError

# ---- the model ---------------------------------------------------------------------------------------------------
# Measured by benchmarks/memory_estimate.py (CPU, torch rasterizer, a 2000-Gaussian sphere): a training view with its
# backward grows the peak by ~470-540 bytes a pixel (every (Gaussian, pixel) pair is kept for the backward pass), a
# rendered turntable frame by ~670; the model takes about twice that, plus a fixed 256 MB for the allocator's first
# blocks and kernels, so that a denser scene still fits what is allowed.
FIXED_BYTES = 256 << 20
BYTES_PER_PIXEL_TRAIN = 1024
BYTES_PER_PIXEL_RENDER = 1024  # no backward, 8 views at a time
BYTES_PER_GAUSSIAN = 59 * 4 * 4 + 2048  # params + grad + Adam's two moments (SH degree 3) and per-view projection
BYTES_PER_GAUSSIAN_VIEW = 400  # projection of one Gaussian into one view (means2d, conic, depth, grads)
BYTES_PER_VOXEL = 40  # the mesh's density, colour sums, filled mask and blurred copy (issue 24: 512³ took 5.2 GB)
BYTES_PER_LATENT_PIXEL = 64 * 1024  # a diffusion UNet's activations per pixel of its input, with gradients
RENDER_CHUNK = 8  # export._render_frames renders this many cameras at a time

MAX_CONFIG_BYTES = 1 << 20  # a YAML config or a batch's prompts file: a megabyte is thousands of lines
MAX_YAML_ALIASES = 20  # anchors used more than this: an alias bomb (a 423-byte file that expands to gigabytes)
MAX_YAML_DEPTH = 32


def available_memory(device: str = "cpu") -> int:
    """Bytes this process may still allocate: free GPU memory on a CUDA device, else Linux's MemAvailable (the
    physical memory; elsewhere, the total)."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = int(str(device).partition(":")[2] or torch.cuda.current_device())
            return int(torch.cuda.mem_get_info(index)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def require(needed: float, what: str, hint: str, device: str = "cpu", available: int | None = None) -> None:
    """ConfigError when `needed` bytes exceed the memory there is; `what` names the values, `hint` the way out."""
    free = available_memory(device) if available is None else available
    if needed > free:
        where = "free GPU memory" if str(device).startswith("cuda") else "memory available"
        raise ConfigError(f"{what} needs about {human(needed)}, more than the {human(free)} of {where}; {hint}")


# ---- the estimates -------------------------------------------------------------------------------------------------
def training_bytes(batch: int, resolution: int, num_points: int, max_gaussians: int) -> float:
    """One training step: the rendered batch with its backward, and the Gaussians with their optimiser state."""
    n = max(num_points, min(max_gaussians, 10 * num_points))
    return (FIXED_BYTES + batch * resolution**2 * BYTES_PER_PIXEL_TRAIN + n * BYTES_PER_GAUSSIAN
            + batch * n * BYTES_PER_GAUSSIAN_VIEW)


def field_training_bytes(batch: int, resolution: int, grid: int, features: int, hidden: int, samples: int) -> float:
    """One radiance-field step (a rough upper bound): the grids with gradient and Adam's two moments, and every
    sample of every ray kept for the backward (features, hidden layer and a few scalars, ×3 for autograd's copies)."""
    params = grid**3 * (1 + features) * 4 * 4
    activations = batch * resolution**2 * samples * (features + hidden + 16) * 4 * 3
    return FIXED_BYTES + params + activations


def frames_bytes(frames: int, size: int, gaussians: int = 0) -> float:
    """A turntable of `frames` frames of side `size` (kept as uint8) plus one chunk of views being rendered."""
    chunk = min(frames, RENDER_CHUNK)
    return (FIXED_BYTES + frames * size**2 * 3 + chunk * size**2 * BYTES_PER_PIXEL_RENDER
            + chunk * gaussians * BYTES_PER_GAUSSIAN_VIEW)


def mesh_bytes(resolution: int) -> float:
    return resolution**3 * BYTES_PER_VOXEL


def text2img_bytes(batch: int, resolution: int) -> float:
    return batch * resolution**2 * BYTES_PER_LATENT_PIXEL


# ---- the checks each command makes ---------------------------------------------------------------------------------
def check_generate(cfg, device: str | None = None, available: int | None = None) -> None:
    """`generate`'s sizes (resolution × batch, points, turntable) and threads, before the prior is loaded. A None
    resolution (the prior's own) counts as 32 for the embedded prior, 512 for any other (Stable Diffusion's)."""
    cores = machine_cores()
    if cfg.threads > cores:
        raise ConfigError(f"threads {cfg.threads} is more than the {cores} cores this process may use (threads on "
                          "a busy core wait for each other); use at most that, or 0 for the free ones")
    device = cfg.device if device is None else device
    scene = cfg.scene
    if getattr(scene, "render_backend", None) == "gsplat":
        from dreammapping.devices import resolve_device
        from dreammapping.render import _gsplat_available

        if resolve_device(device).type != "cuda" or not _gsplat_available():
            raise ConfigError("render_backend gsplat needs a CUDA device and the gsplat package (pip install -e "
                              "\".[gpu]\"); use auto or torch here")
    resolution = cfg.resolution or (64 if cfg.prior == "embedded-v2" else 32 if cfg.prior in ("embedded", "embedded-v1") else 512)
    if hasattr(scene, "num_points"):  # Gaussians
        max_gaussians = scene.density.max_gaussians
        require(training_bytes(cfg.batch, resolution, scene.num_points, max_gaussians),
                f"training at resolution {resolution} × batch {cfg.batch} with {scene.num_points} points",
                "lower --resolution, --batch or --num-points", device, available)
    else:  # a radiance field
        max_gaussians = 0
        require(field_training_bytes(cfg.batch, resolution, scene.grid_resolution, scene.feature_dim,
                                     scene.hidden_dim, scene.samples_per_ray),
                f"training a radiance field (grid {scene.grid_resolution}³, {scene.samples_per_ray} samples a ray) "
                f"at resolution {resolution} × batch {cfg.batch}",
                "lower --resolution, --batch, --grid-resolution or --samples-per-ray", device, available)
    require(frames_bytes(cfg.turntable_frames, cfg.turntable_size, max_gaussians),
            f"a turntable of {cfg.turntable_frames} frames at --turntable-size {cfg.turntable_size}",
            "lower --turntable-size or --turntable-frames", "cpu", available)


def read_capped(path, limit: int = MAX_CONFIG_BYTES, what: str = "file") -> bytes:
    """The bytes of a user-named file, refusing (ConfigError) one larger than `limit` — without reading more than
    `limit` + 1 bytes, so /dev/zero or a FIFO cannot exhaust memory. OSError propagates."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{path}: the {what} is larger than {human(limit)}; is it the right file?")
    return data


def check_yaml_shape(text: str, where: str) -> None:
    """Refuse YAML whose anchors are used more than MAX_YAML_ALIASES times or that nests deeper than MAX_YAML_DEPTH:
    what an alias bomb needs, and what no config needs. Scans the event stream (cheap, no expansion)."""
    import yaml

    aliases = depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_YAML_ALIASES:
                    raise ConfigError(f"{where}: more than {MAX_YAML_ALIASES} YAML aliases (*name); a config needs "
                                      "none — write the values out")
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(f"{where}: nested more than {MAX_YAML_DEPTH} levels deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0][:200]})") from None
