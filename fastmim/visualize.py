"""`python -m fastmim.visualize MODEL --images PATH`: a picture of what a pretrained method does with some images.

MODEL is a fastmim pretraining checkpoint (`runs/x/checkpoints/last.pt`): the method is rebuilt from the run's
configuration and its weights, the teacher from the run's teacher weights (or --teacher-weights; a random
teacher as the run built it, from its train.seed). PATH is an image file, a folder of images (searched
recursively) or a list file (one path per line). Each image goes through the evaluation transform (resize to
size / 0.875, centre crop) and the method, in eval mode, with masks drawn from --seed: the same command gives
the same picture, byte for byte.

One PNG, a row per image: the input; the mask the method draws (masked patches grey); where the mask comes
from the teacher's CLS attention, that importance; for MAE and MR-MAE the reconstruction of the masked patches
(un-normalized with each patch's own mean and variance when norm_pix, as MAE's demo) and the same with the
visible patches pasted back; for MaskAlign, MR-MAE and MaskDistill the cosine similarity between prediction and
teacher target at each supervised patch; each row's title gives the image's loss. --out-json writes the numbers
behind it (masks, importance, similarities, losses, each panel's box in the PNG).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastmim.console import one_line_warnings

EXAMPLES = """examples:
  python -m fastmim.visualize runs/demo/checkpoints/last.pt --images ~/photos --n 4 --out maskalign.png
  python -m fastmim.visualize runs/mae/checkpoints/last.pt --images list.txt --out-json mae.json --device cuda
  python -m fastmim.visualize runs/vitb/checkpoints/last.pt --images cat.jpg --teacher-weights ViT-B-16.pt
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmim.visualize", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("model", metavar="MODEL", help="a fastmim pretraining checkpoint (.pt), e.g. "
                   "runs/demo/checkpoints/last.pt")
    p.add_argument("--images", required=True, metavar="PATH", help="an image file, a folder of images (searched "
                   "recursively, in path order) or a list file of image paths; unreadable images are skipped")
    p.add_argument("--n", type=int, default=8, metavar="N", help="how many images (rows): the first N readable "
                   "ones (default 8)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the masks' random numbers (default "
                   "0): the same seed, the same picture")
    p.add_argument("--out", default="picture.png", metavar="FILE.png", help="where the PNG goes (default "
                   "picture.png)")
    p.add_argument("--out-json", metavar="FILE.json", help="also write the numbers behind the picture as JSON")
    p.add_argument("--teacher-weights", metavar="FILE|hub|random", help="the teacher's weights instead of the "
                   "run's (a .safetensors/.pth in timm, OpenAI CLIP or open_clip layout; MR-MAE: one per teacher, "
                   "comma-separated)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the method runs "
                   "(auto: CUDA when available)")
    return p


def check_args(args) -> None:
    """What needs no file read: the numbers and the output names."""
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    for flag, value, suffix in (("--out", args.out, ".png"), ("--out-json", args.out_json, ".json")):
        if value is None:
            continue
        if not value.lower().endswith(suffix):
            raise ValueError(f"{flag} {value!r}: the file name must end in {suffix}")
        if Path(value).is_dir():
            raise ValueError(f"{flag} {value!r} is a folder; name a file")


def image_files(path: str) -> list[str]:
    """An image file itself, or the images of a folder or list file (fastmim.data.folder's rules)."""
    from fastmim.data.folder import check_exists, find_images, is_image

    try:
        p = check_exists(path)
        return [str(p)] if p.is_file() and is_image(p.name) else find_images(p)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"--images: {error}") from None


def load_method(path: str, teacher_weights: str | None, device):
    """(the method, in eval mode on `device`, with the checkpoint's weights; the run's configuration; its step)."""
    import torch

    from fastmim.checkpoint import CheckpointError, load_checkpoint, read_config
    from fastmim.methods.registry import METHODS, build_method
    from fastmim.pictures import draws_pictures

    checkpoint = load_checkpoint(Path(path))
    try:
        cfg = read_config(checkpoint, path)
    except CheckpointError:
        raise
    except ValueError as error:  # e.g. a method this fastmim does not know
        raise ValueError(f"checkpoint {path!r}: {error}") from None
    name = checkpoint.get("method_name", "maskalign")
    if name not in METHODS:
        raise ValueError(f"checkpoint {path!r} was written by a {name!r} run, a method this fastmim does not "
                         f"know (known: {', '.join(sorted(METHODS))})")
    if not draws_pictures(METHODS[name]):
        raise ValueError(f"checkpoint {path!r} is a {name} run: {name} draws no pictures (pictures are of "
                         "pretraining methods)")
    if teacher_weights is not None:
        from fastmim.pretrain import set_teacher_flags

        set_teacher_flags(cfg, None, teacher_weights)
    torch.manual_seed(cfg.train.seed)  # a random teacher as the trainer built it (seeded before the method)
    try:
        method = build_method(cfg.method, cfg.data.image)
    except FileNotFoundError as error:  # the run's teacher weights moved
        hint = "" if teacher_weights else "; pass --teacher-weights FILE"
        raise FileNotFoundError(f"{error}{hint}") from None
    try:
        method.load_state_dict(checkpoint["method"])
    except RuntimeError as error:
        first = "; ".join(str(error).split("\n\t")[1:3])
        raise ValueError(f"checkpoint {path!r} does not fit the {name} its configuration describes: {first}") from None
    method.prepare(device, "fp32", False)
    return method.eval(), cfg, checkpoint.get("step")


def visualize(args) -> tuple:
    """(the figure, the numbers) of the picture; nothing is written here."""
    import torch

    from fastmim.data.folder import ImageFiles
    from fastmim.eval.features import eval_transform
    from fastmim.pictures import Sheet, draw, figure, load_images, numbers

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    files = image_files(args.images)
    method, cfg, step = load_method(args.model, args.teacher_weights, device)
    image = cfg.data.image
    images, names = load_images(ImageFiles(files), range(len(files)), args.n,
                                eval_transform(image.size, image.mean, image.std))
    if images is None:
        raise ValueError(f"--images {args.images!r}: none of its {len(files)} images could be read")
    images = images.to(device)
    data = draw(method, images, args.seed)
    if data is None:
        raise ValueError(f"{method.name} draws no pictures")
    sheet = Sheet(method.name, step, names, image, cfg.method.patch_size)
    fig, boxes = figure(data, images, sheet)
    return fig, numbers(data, images, sheet, boxes, args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    one_line_warnings()
    try:
        check_args(args)
        fig, result = visualize(args)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: error: interrupted; nothing was written\n")
    from fastmim.pictures import write_json, write_png

    write_png(fig, Path(args.out))
    print(f"wrote {args.out} ({len(result['images'])} images, step {result['step']}, seed {args.seed})")
    if args.out_json:
        write_json(result, Path(args.out_json))
        print(f"wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
