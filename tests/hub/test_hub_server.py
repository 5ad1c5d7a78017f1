"""The local Hub server (tests/hub_server.py) driven through the public huggingface_hub API, for real."""

import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub as hfh
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

BIG = 11 * 1024 * 1024  # > 10 MB: would be an LFS/Xet upload on the real Hub; inline here


@pytest.fixture
def folder(tmp_path) -> Path:
    """A small model-like folder, including an 11 MB binary."""
    root = tmp_path / "upload"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden": 4}')
    (root / "sub" / "notes.txt").write_text("hello hub\n")
    (root / "sub" / "deeper" / "empty.txt").write_bytes(b"")
    (root / "weights.bin").write_bytes(os.urandom(BIG))
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_upload_folder_then_download_byte_identical(hub_env, folder):
    repo_id = hub_env.new_repo_id("roundtrip")
    url = hfh.create_repo(repo_id)
    assert url.repo_id == repo_id and url.startswith(hub_env.url)
    info = hfh.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="add files")
    assert len(info.oid) == 40

    expected = _files(folder)
    assert set(hfh.list_repo_files(repo_id)) == set(expected) | {".gitattributes"}
    model_info = hfh.model_info(repo_id)
    assert model_info.sha == info.oid
    assert {s.rfilename: s.size for s in model_info.siblings}["weights.bin"] == BIG
    for path, content in expected.items():
        assert Path(hfh.hf_hub_download(repo_id, path)).read_bytes() == content

    snapshot = Path(hfh.snapshot_download(repo_id))
    assert snapshot.name == info.oid
    assert _files(snapshot) == {**expected, ".gitattributes": _files(snapshot)[".gitattributes"]}


def test_second_commit_moves_main_but_old_sha_keeps_old_content(hub_env, tmp_path):
    repo_id = hub_env.new_repo_id("revisions")
    hfh.create_repo(repo_id)
    first = hfh.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id=repo_id, commit_message="v1")
    second = hfh.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=repo_id, commit_message="v2")
    assert first.oid != second.oid
    assert hfh.model_info(repo_id).sha == second.oid
    assert hfh.model_info(repo_id, revision=first.oid).sha == first.oid

    assert Path(hfh.hf_hub_download(repo_id, "a.txt")).read_bytes() == b"v2"
    assert Path(hfh.hf_hub_download(repo_id, "a.txt", revision=first.oid)).read_bytes() == b"v1"
    old = Path(hfh.snapshot_download(repo_id, revision=first.oid, local_dir=tmp_path / "old"))
    assert (old / "a.txt").read_bytes() == b"v1"

    # Unchanged content is skipped client-side (preupload returns the remote oid), like on the real Hub.
    same = hfh.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=repo_id, commit_message="noop")
    assert same.oid == second.oid

    hfh.delete_file("a.txt", repo_id=repo_id)
    assert not hfh.file_exists(repo_id, "a.txt")
    assert hfh.file_exists(repo_id, "a.txt", revision=second.oid)
    with pytest.raises(RevisionNotFoundError):
        hfh.hf_hub_download(repo_id, "a.txt", revision="no-such-branch")


def test_exists_and_not_found_errors(hub_env):
    repo_id = hub_env.new_repo_id("exists")
    missing = hub_env.new_repo_id("missing")
    hfh.create_repo(repo_id)
    hfh.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id)

    assert hfh.repo_exists(repo_id) and not hfh.repo_exists(missing)
    assert hfh.file_exists(repo_id, "config.json") and not hfh.file_exists(repo_id, "nope.json")
    assert hfh.revision_exists(repo_id, "main") and not hfh.revision_exists(repo_id, "dev")
    with pytest.raises(RepositoryNotFoundError):
        hfh.hf_hub_download(missing, "config.json")
    with pytest.raises(RepositoryNotFoundError):
        hfh.model_info(missing)
    with pytest.raises(EntryNotFoundError):
        hfh.hf_hub_download(repo_id, "nope.json")

    with pytest.raises(HfHubHTTPError) as exc:
        hfh.create_repo(repo_id)
    assert exc.value.response.status_code == 409
    assert hfh.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    hfh.delete_repo(repo_id)
    assert not hfh.repo_exists(repo_id)


def test_dataset_and_space_repos(hub_env, tmp_path):
    dataset = hub_env.new_repo_id("data")
    assert hfh.create_repo(dataset, repo_type="dataset").repo_type == "dataset"
    hfh.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id=dataset, repo_type="dataset")
    assert Path(hfh.hf_hub_download(dataset, "train.csv", repo_type="dataset")).read_bytes() == b"a,b\n1,2\n"
    assert (Path(hfh.snapshot_download(dataset, repo_type="dataset")) / "train.csv").is_file()
    assert not hfh.repo_exists(dataset)  # same id as a model does not exist

    space = hub_env.new_repo_id("space")
    hfh.create_repo(space, repo_type="space", space_sdk="gradio")
    hfh.upload_file(path_or_fileobj=b"print(1)", path_in_repo="app.py", repo_id=space, repo_type="space")
    assert hfh.space_info(space).sdk == "gradio"
    assert Path(hfh.hf_hub_download(space, "app.py", repo_type="space")).read_bytes() == b"print(1)"


def test_token_handling(hub_env, tmp_path):
    assert hfh.whoami()["name"] == hub_env.user  # any token is accepted by default
    repo_id = hub_env.new_repo_id("private")
    hfh.create_repo(repo_id, private=True)
    hfh.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hfh.hf_hub_download(repo_id, "s.txt", token=False)  # private repo, anonymous

    with hub_env.require_token():
        assert hfh.whoami()["name"] == hub_env.user
        assert Path(hfh.hf_hub_download(repo_id, "s.txt")).read_bytes() == b"secret"
        wrong = HfApi(token="hf_wrong")
        for call in (
            wrong.whoami,
            lambda: wrong.create_repo(hub_env.new_repo_id("denied")),
            lambda: wrong.model_info(repo_id),
            # (fresh cache: with the file cached, hf_hub_download would fall back to it instead of raising)
            lambda: hfh.hf_hub_download(repo_id, "s.txt", token="hf_wrong", cache_dir=tmp_path / "other"),
        ):
            with pytest.raises(HfHubHTTPError) as exc:
                call()
            assert exc.value.response.status_code == 401
            assert not isinstance(exc.value, RepositoryNotFoundError)
    assert HfApi(token="hf_wrong").whoami()["name"] == hub_env.user  # requirement lifted again


def test_subprocess_uses_hf_endpoint_from_env(hub_env):
    repo_id = hub_env.new_repo_id("subprocess")
    hfh.create_repo(repo_id)
    hfh.upload_file(path_or_fileobj=b"from a subprocess", path_in_repo="msg.txt", repo_id=repo_id)
    code = (
        "import sys; from huggingface_hub import hf_hub_download, constants;"
        "assert constants.ENDPOINT == sys.argv[2], constants.ENDPOINT;"
        "print(open(hf_hub_download(sys.argv[1], 'msg.txt')).read())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, repo_id, hub_env.url], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from a subprocess"


def test_timm_hf_hub_model_roundtrip(hub_env):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kwargs = dict(num_classes=3, channel_multiplier=0.25, depth_multiplier=0.25)
    model = timm.create_model("tf_efficientnetv2_b0", **kwargs).eval()
    repo_id = hub_env.new_repo_id("timm-effnet")
    timm.models.push_to_hf_hub(model, repo_id)  # timm records the create_model kwargs in config.json
    assert {"config.json", "model.safetensors", "README.md"} <= set(hfh.list_repo_files(repo_id))

    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_transformers_push_to_hub_and_from_pretrained(hub_env):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    )
    model = transformers.BertModel(config).eval()
    repo_id = hub_env.new_repo_id("tiny-bert")
    model.push_to_hub(repo_id)
    assert {"config.json", "model.safetensors"} <= set(hfh.list_repo_files(repo_id))

    loaded = transformers.AutoModel.from_pretrained(repo_id).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, loaded(ids).last_hidden_state)
