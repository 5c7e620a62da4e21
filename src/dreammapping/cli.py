"""`dreammapping` command line: one subcommand per task, each implemented next to the code it drives.

Subcommands are imported lazily so that `dreammapping --help` is instant and a broken optional dependency of one
subcommand never breaks the others. Each entry point takes the remaining argv and returns an exit code.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from dreammapping import __version__

# name → (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("dreammapping.train", "cli_generate", "text → 3D Gaussian splat (Algorithm 1)"),
    "text2img": ("dreammapping.guidance.text2img", "cli_text2img", "text → image by score distillation"),
    "render": ("dreammapping.export", "cli_render", "turntable video and view grid of a run or a .ply"),
    "export": ("dreammapping.formats", "cli_export", "a run or .ply as .ply, .splat, or a .glb/.obj mesh"),
    "train-prior": ("dreammapping.toyworld.train_prior", "cli_train_prior", "train the embedded toy-world prior"),
    "evaluate": ("dreammapping.evaluate", "cli_evaluate", "score runs against ground truth, CLIP and 3D-FID"),
    "app": ("dreammapping.app", "cli_app", "local web app: prompt → live 3D view → downloads (extra [app])"),
    "batch": ("dreammapping.batch", "cli_batch", "many prompts × seeds × methods, on a local pool or a Ray cluster"),
}
# Subcommands that need an optional extra, and which: a missing package is then one line naming the extra.
EXTRAS: dict[str, str] = {"app": "app"}
# Libraries whose own warnings (deprecations of their arguments, e.g. huggingface_hub's local_dir_use_symlinks, tyro's
# notes on defaults) say nothing to a user of the command line and would add lines to its one-line errors. Our own
# warnings (an unknown word, a cut prompt) are printed by the program itself and are not affected.
QUIET_LIBRARIES = r"(huggingface_hub|tyro|diffusers|transformers|torch|imageio|viser|ray)(\..*)?$"


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: dreammapping <command> [options]   (dreammapping <command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"dreammapping {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"dreammapping: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module, function, _ = SUBCOMMANDS[name]
    warnings.filterwarnings("ignore", module=QUIET_LIBRARIES)
    try:
        entry = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        if name not in EXTRAS or (e.name or "").startswith("dreammapping"):
            raise
        print(f"dreammapping {name}: needs the optional package {e.name!r}; install it with: "
              f"pip install -e \".[{EXTRAS[name]}]\"", file=sys.stderr)
        return 2
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
