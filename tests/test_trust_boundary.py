"""Nothing is read outside the project's folders and the configured mirrors (docs/reliability.md)."""

import os
from pathlib import Path

import pandas as pd
import pytest

from stages.data.datasets import DatasetSpec
from stages.data.hub import split_files
from stages.data.unlabeled import UnlabeledSpec, source_files
from stages.errors import StageError
from stages.params import load_params
from stages.sources import write_sources
from tests.conftest import write_params

ROWS = pd.DataFrame({"review": [f"review {i}" for i in range(20)], "rating": ["pos", "neg"] * 10})


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "project"
    (root / "data/external/x").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


def declare(**fields) -> dict:
    return {"x": DatasetSpec.model_validate({"text": ["review"], "label": "rating", **fields})}


def test_a_symlink_under_data_external_pointing_outside_is_refused(project, tmp_path):
    outside = tmp_path / "outside.csv"  # e.g. a private file elsewhere on the machine
    ROWS.to_csv(outside, index=False)
    os.symlink(outside, project / "data/external/x/train.csv")
    with pytest.raises(StageError, match=r"datasets\.x\.train: data/external/x/train\.csv resolves to .*outside"):
        write_sources(["x"], declare(train="data/external/x/train.csv"), Path("data/sources"))
    assert not Path("data/sources").exists()


def test_an_unlabeled_file_linking_outside_is_refused(project, tmp_path):
    outside = tmp_path / "private.txt"
    outside.write_text("a private line\n")
    os.symlink(outside, project / "data/external/x/unlabeled.txt")
    with pytest.raises(StageError, match=r"unlabeled\.x: data/external/x/unlabeled\.txt resolves to .*outside"):
        source_files("x", UnlabeledSpec(files=["data/external/x/unlabeled.txt"]))


def test_a_symlinked_folder_under_data_external_pointing_outside_is_refused(project, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    ROWS.to_csv(tmp_path / "elsewhere/train.csv", index=False)
    os.symlink(tmp_path / "elsewhere", project / "data/external/linked")
    with pytest.raises(StageError, match=r"resolves to .*outside data/external"):
        write_sources(["x"], declare(train="data/external/linked/train.csv"), Path("data/sources"))


def test_a_symlink_that_stays_inside_data_external_is_read(project):
    ROWS.to_csv(project / "data/external/x/all.csv", index=False)
    os.symlink("all.csv", project / "data/external/x/train.csv")  # relative, inside
    described = write_sources(["x"], declare(train="data/external/x/train.csv"), Path("data/sources"))
    assert list(described["x"]["task"]["label_names"]) == ["neg", "pos"]


@pytest.mark.parametrize("hub", ["../outside", "/etc/passwd", "owner/../../x", "owner/name/extra", "name", "owner/..",
                                 "./x", "owner/.", "a\\b/c"])
def test_a_hub_id_must_be_owner_slash_name(tmp_path, hub):
    params = write_params(tmp_path / "params.yaml", tasks=["x"], datasets={"x": {"hub": hub, "text": ["t"], "label": "l"}})
    with pytest.raises(StageError, match=r"datasets\.x\.hub.*owner/name"):
        load_params(params)


def test_hub_split_files_never_leave_the_local_copy(tmp_path):
    """Defence in depth below the params check: the reader itself refuses an id that escapes data.hub_dir,
    and a Parquet file in the copy that is a symlink to somewhere else."""
    hub = tmp_path / "hub"
    (hub / "org/ds/data").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    ROWS.to_parquet(tmp_path / "secret/train-00000-of-00001.parquet")
    with pytest.raises(StageError, match=r"not a Hub dataset id"):
        split_files("../secret", "train", local_root=hub)
    os.symlink(tmp_path / "secret/train-00000-of-00001.parquet", hub / "org/ds/data/train-00000-of-00001.parquet")
    with pytest.raises(StageError, match=r"resolves to .*outside"):
        split_files("org/ds", "train", local_root=hub)
