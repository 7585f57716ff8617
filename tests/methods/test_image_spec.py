"""The image (size, mean, std) belongs to the data section alone: what `--set data.mean/std` say is what every
teacher folds into its patch embedding. The teacher's targets on images normalized with the data's statistics
equal the same teacher run, as timm runs it, on the pixels normalized with its own statistics (CLIP's)."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from fastmim.methods.registry import build_method
from fastmim.pretrain import build_parser, resolve_config

CLIP = "vit_base_patch16_clip_quickgelu_224"
CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073))[:, None, None]
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711))[:, None, None]


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(CLIP, pretrained=False, num_classes=0, img_size=64, depth=4).eval()
    path = tmp_path_factory.mktemp("teacher") / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def timm_levels(model, pixels: torch.Tensor) -> torch.Tensor:
    """Every block's output [depth, B, 1+N, D] of the timm model on pixels in [0, 1] normalized its own way."""
    x = (pixels - CLIP_MEAN) / CLIP_STD
    x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    outputs = []
    for block in model.blocks:
        x = block(x)
        outputs.append(x)
    return torch.stack(outputs)


@pytest.mark.parametrize("recipe", ["demo", "demo_mrmae", "demo_maskdistill"])
@pytest.mark.parametrize("mean, std", [((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), ((0.1, 0.2, 0.3), (0.9, 0.6, 0.3))])
def test_the_datas_normalization_reaches_the_teacher(clip_weights, recipe, mean, std):
    model, path = clip_weights
    args = ["--recipe", recipe, "--teacher", CLIP, "--teacher-weights", str(path),
            "--set", "method.teacher_kwargs={depth: 4}", "--set", f"data.mean={list(mean)}",
            "--set", f"data.std={list(std)}"]
    cfg = resolve_config(build_parser().parse_args(args))
    method = build_method(cfg.method, cfg.data.image)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    images = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        expected = timm_levels(model, pixels)
    ours = method.teachers[0](images, [1, 2, 3, 4], importance=False).levels
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_the_image_size_is_the_datas(clip_weights):
    _, path = clip_weights
    args = ["--recipe", "demo", "--set", "data.img_size=96", "--set", "method.fusion=sum"]
    cfg = resolve_config(build_parser().parse_args(args))
    method = build_method(cfg.method, cfg.data.image)
    assert method.student.img_size == 96 and method.teacher.img_size == 96
