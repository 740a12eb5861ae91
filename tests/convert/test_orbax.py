"""Reading orbax checkpoints with tensorstore: step directories, items, metadata, errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from authors_fixture import RELEASED_ROOT, TRAINER_ROOT
from lightning_ttt.convert.orbax import find_step, model_weights_dir, open_item

pytest.importorskip("tensorstore")
from orbax_writer import write_checkpoint  # noqa: E402  (tests/convert/orbax_writer.py; needs tensorstore)

SHARED_PARAMS = Path(__file__).resolve().parents[3] / "shared/fixtures/authors_checkpoint/reference.npz"


def test_both_roots_hold_the_same_twenty_arrays():
    released, trainer = open_item(model_weights_dir(RELEASED_ROOT)), open_item(model_weights_dir(TRAINER_ROOT))
    assert len(released) == 20 and set(released) == set(trainer)
    assert released["language_model.model.h.prime_storage.feed_forward_prime.w2.weight"].shape == (2, 96, 64)
    assert not any(name.endswith(".bias") or "lm_head" in name for name in released)  # empty nodes skipped
    for name in released:
        a, b = released[name].read(), trainer[name].read()
        assert a.dtype == np.float32 and np.array_equal(a, b), name


@pytest.mark.skipif(not SHARED_PARAMS.is_file(), reason="the full fixture (with every parameter) is not beside the repo")
def test_arrays_equal_the_fixtures_plain_copies():
    with np.load(SHARED_PARAMS) as npz:
        for name, stored in open_item(model_weights_dir(RELEASED_ROOT)).items():
            np.testing.assert_array_equal(stored.read(), npz[f"params/{name}"])


def test_step_selection(tmp_path: Path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for step in (9, 120, 40):
        write_checkpoint(tmp_path / "root", step, {"w": arrays["w"] + step})
    (tmp_path / "root" / "1000.orbax-checkpoint-tmp-5").mkdir()  # an unfinished save is not a step
    assert find_step(tmp_path / "root").name == "120"
    assert find_step(tmp_path / "root", 40).name == "40"
    assert find_step(tmp_path / "root" / "9").name == "9"  # a step directory itself
    assert open_item(model_weights_dir(tmp_path / "root", 9))["w"].read()[0, 0] == 9
    with pytest.raises(FileNotFoundError, match=r"has no step 41 \(steps: 9, 40, 120\)"):
        find_step(tmp_path / "root", 41)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no step directory"):
        find_step(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        find_step(tmp_path / "missing")
    (tmp_path / "noweights" / "3" / "opt_state").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no model_weights/ item \(it holds: opt_state\)"):
        model_weights_dir(tmp_path / "noweights")


def test_zarr3_chunked_and_plain_directory_layouts(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {"a.stacked": rng.standard_normal((5, 7, 3)).astype(np.float32), "a.vector": np.ones(4, np.float32)}
    for zarr3 in (False, True):
        item = write_checkpoint(tmp_path / f"z{int(zarr3)}", 1, arrays, zarr3=zarr3, chunk_rows=2) / "model_weights"
        stored = open_item(item)
        for name, array in arrays.items():
            np.testing.assert_array_equal(stored[name].read(), array)
    # older orbax: one plain directory per array, no OCDBT
    import tensorstore as ts

    item = tmp_path / "plain" / "1" / "model_weights"
    item.mkdir(parents=True)
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": f"{item}/a.vector/"},
            "metadata": {"shape": [4], "chunks": [4], "dtype": "<f4"}}
    ts.open(spec, create=True).result().write(np.full(4, 3, np.float32)).result()
    meta = {"tree_metadata": {"('a', 'vector')": {"key_metadata": [{"key": "a"}, {"key": "vector"}],
                                                   "value_metadata": {"value_type": "jax.Array"}}}}
    (item / "_METADATA").write_text(json.dumps(meta))
    assert open_item(item)["a.vector"].read().tolist() == [3, 3, 3, 3]


def _copy_item(tmp_path: Path) -> Path:
    shutil.copytree(RELEASED_ROOT, tmp_path / "root")
    return tmp_path / "root" / "4799" / "model_weights"


def test_unreadable_stores_are_one_line_errors(tmp_path: Path):
    item = _copy_item(tmp_path)
    for data in (item / "ocdbt.process_0" / "d").iterdir():
        data.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot (open|read) array language_model\.model\.") as err:
        for stored in open_item(item).values():
            stored.read()
    assert "\n" not in str(err.value)
    (item / "manifest.ocdbt").unlink()
    (item / "ocdbt.process_0" / "manifest.ocdbt").unlink()
    with pytest.raises(ValueError, match="cannot open array"):
        open_item(item)


def test_bad_metadata(tmp_path: Path):
    item = _copy_item(tmp_path)
    (item / "_METADATA").write_text("{not json")
    with pytest.raises(ValueError, match="_METADATA is not readable JSON"):
        open_item(item)
    (item / "_METADATA").write_text(json.dumps({"use_zarr3": False}))
    with pytest.raises(ValueError, match="has no tree_metadata"):
        open_item(item)
    (item / "_METADATA").unlink()
    with pytest.raises(FileNotFoundError, match="has no _METADATA file"):
        open_item(item)


def test_missing_tensorstore_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorstore", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[jax-import\]"'):
        open_item(model_weights_dir(RELEASED_ROOT))
