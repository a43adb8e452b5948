"""`decoder_check.py` (the GPU check's decoder stage) run here on the emulated device, so the
script is known to work before a GPU runs it, and its comparison known to reject bad logits."""

import numpy as np

import decoder_check


def test_decoder_check_passes_on_the_emulated_device(stagformer_bin, capsys):
    status = decoder_check.main(["--bin", stagformer_bin, "--device", "emu"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "0 failed" in out, out
    # Every variant ran, each in several modes with graphs on and off.
    for name, _, _ in decoder_check.VARIANTS:
        assert f"ok   {name} " in out, f"{name} missing:\n{out}"
    assert out.count("graphs on ") == out.count("graphs off")


def test_comparison_rejects_wrong_logits():
    rng = np.random.default_rng(0)
    want = rng.standard_normal((6, 48))
    assert decoder_check.compare(want + 1e-7, want, "f32")[3]
    assert not decoder_check.compare(want + 1e-2, want, "f32")[3]
    assert decoder_check.compare(want * (1 + 1e-3), want, "bf16")[3]
    assert not decoder_check.compare(want + 0.1 * rng.standard_normal(want.shape), want,
                                     "bf16")[3]
    bad = want.copy()
    bad[2, 3] = np.nan
    assert not decoder_check.compare(bad, want, "f32")[3]
    assert not decoder_check.compare(bad, want, "bf16")[3]


def test_a_failing_binary_fails_the_check(tmp_path, capsys):
    fake = tmp_path / "stagformer"
    fake.write_text("#!/bin/sh\necho 'no such device' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert decoder_check.main(["--bin", str(fake), "--device", "emu", "--quick"]) == 1
    assert "FAIL" in capsys.readouterr().out
