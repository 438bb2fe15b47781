"""The demo reuses a cached bundle only when this bodyrt version exported it from this checkpoint."""

from types import SimpleNamespace


def fake_bundle(checkpoint_sha256: str, version: str):
    source = SimpleNamespace(checkpoint_sha256=checkpoint_sha256)
    return SimpleNamespace(manifest=SimpleNamespace(source=source, tools={"bodyrt": version}))


def test_a_bundle_of_another_bodyrt_version_is_not_reused(tmp_path, monkeypatch):
    import bodyrt
    import bodyrt.runtime.bundle
    from bodyrt.export.demo import _bundle_matches

    for (sha, version), expected in [(("abc", bodyrt.__version__), True), (("abc", "0.0.1"), False),
                                     (("def", bodyrt.__version__), False)]:
        monkeypatch.setattr(bodyrt.runtime.bundle, "read_bundle", lambda path, sha=sha, version=version:
                            fake_bundle(sha, version))
        assert _bundle_matches(tmp_path, "abc") is expected


def test_the_demo_speed_up_comes_with_a_word_about_noise(capsys):
    from bodyrt.export.demo import _print_table

    stages = {"body": 10.0, "total": 20.0}
    _print_table({"onnxruntime": stages, "pytorch": {"body": 20.0, "total": 40.0}}, threads=2, repeats=5)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("speed-up"))
    assert "2.00x" in line and "median of 5 runs" in line and "bodyrt bench" in line
