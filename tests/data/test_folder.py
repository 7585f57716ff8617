import pytest

from fastmim.data.folder import ImageFiles, find_images, find_tar_shards
from tests.data.helpers import write_garbage_jpeg, write_jpegs


def test_image_folder_tree_and_flat_folder(tmp_path):
    tree = write_jpegs(tmp_path / "tree", 6, classes=3)
    (tmp_path / "tree" / "class_0" / "notes.txt").write_text("not an image")
    assert find_images(tmp_path / "tree") == sorted(str(p) for p in tree)
    flat = write_jpegs(tmp_path / "flat", 4, classes=0)
    assert find_images(tmp_path / "flat") == [str(p) for p in flat]


def test_list_file_relative_paths_labels_and_comments(tmp_path):
    paths = write_jpegs(tmp_path / "data", 3, classes=0)
    listing = tmp_path / "data" / "train.txt"
    listing.write_text(f"# a comment\n{paths[0].name} 0\n\n{paths[1].name}\n{paths[2]} 12\n")
    assert find_images(listing) == [str(p) for p in paths]


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images(missing)


def test_empty_folder_names_it(tmp_path):
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        find_images(tmp_path / "empty")


def test_empty_list_file_names_it(tmp_path):
    listing = tmp_path / "empty_list.txt"
    listing.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="empty_list.txt"):
        find_images(listing)


def test_list_file_naming_missing_files(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("gone.jpg\n")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        find_images(listing)


def test_folder_of_tar_shards_is_found_and_rejected_for_file_reading(tmp_path):
    (tmp_path / "shards").mkdir()
    for name in ("b.tar", "a.tar"):
        (tmp_path / "shards" / name).write_bytes(b"")
    assert find_tar_shards(tmp_path / "shards") == [str(tmp_path / "shards" / n) for n in ("a.tar", "b.tar")]
    with pytest.raises(ValueError, match="DALI"):
        find_images(tmp_path / "shards")


def test_image_files_decode_and_raise_on_garbage(tmp_path):
    good = write_jpegs(tmp_path, 1, classes=0)[0]
    bad = write_garbage_jpeg(tmp_path / "bad.jpg")
    files = ImageFiles([str(good), str(bad)])
    assert files.load(0).mode == "RGB" and files.load(0).size == (48, 40)
    with pytest.raises(Exception):
        files.load(1)
    assert files.describe(1) == str(bad)
