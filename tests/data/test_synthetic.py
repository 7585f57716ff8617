import numpy as np

from fastmim.data.synthetic import SyntheticImages, render


def test_picture_depends_only_on_seed_and_index():
    a = SyntheticImages(10, seed=1)
    b = SyntheticImages(500, seed=1)  # a larger set: picture 3 is still picture 3
    assert np.array_equal(np.asarray(a.load(3)), np.asarray(b.load(3)))
    assert not np.array_equal(np.asarray(a.load(3)), np.asarray(a.load(4)))
    assert not np.array_equal(np.asarray(a.load(3)), np.asarray(SyntheticImages(10, seed=2).load(3)))


def test_pictures_have_structure_not_noise():
    """Neighbouring pixels agree far more than distant ones (edges and flat regions, not i.i.d. noise), and
    colours vary a lot within a picture."""
    for i in range(8):
        x = render(0, i, 128).astype(np.float32)
        assert x.std() > 20
        near = np.abs(x[:, 1:] - x[:, :-1]).mean()
        far = np.abs(x[:, 64:] - x[:, :-64]).mean()
        assert near < 0.4 * far, (i, near, far)


def test_size_and_mode():
    images = SyntheticImages(4, size=96)
    picture = images.load(0)
    assert picture.size == (96, 96) and picture.mode == "RGB"
    assert len(images) == 4 and "3" in images.describe(3)
