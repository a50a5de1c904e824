"""`pykvd verify`: the per-layer table and summary on both real models, exit 0 when exact."""

from __future__ import annotations

import json

from pykvd.verify import LayerCheck, StepsCheck, VerifyReport, format_report


def test_verify_both_real_models_by_default(tmp_path, pykvd_cli):
    out = tmp_path / "verify.json"
    result = pykvd_cli("verify", "--json", str(out), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "recoverability, 30 global layers: max |dK|,|dV| = 0  OK" in text  # smollm2
    assert "recoverability, 3 global layers: max |dK|,|dV| = 0  OK" in text  # gemma3
    assert "recoverability, 15 sliding layers: max |dK|,|dV| = 0  OK" in text
    assert text.count("cacheless: 64 steps, tokens identical, max |dlogit| = 0  OK") == 2
    assert text.count("32 steps, tokens identical, max |dlogit| = 0  OK") == 2 * (5 + 2)
    for kind in ("tokens", "residuals"):  # kvdirect under a budget below the prompt, drafting
        assert text.count(f"kvdirect ({kind}) at budget") == 2
    assert "MISMATCH" not in text
    reports = json.loads(out.read_text())
    assert [r["architecture"] for r in reports] == ["gemma3", "llama"]
    assert all(r["ok"] for r in reports)
    assert [c["layer"] for c in reports[1]["recoverability"]] == list(range(30))


def test_a_mismatch_is_reported_and_fails():
    report = VerifyReport(
        "m.gguf",
        "llama",
        10,
        recoverability=[LayerCheck(0, "global", 0.0, 0.0), LayerCheck(1, "global", 0.0, 2e-3)],
        cacheless=StepsCheck("cacheless", 4, True, 0.0),
        restore=[StepsCheck("re-prefill from token ids", 4, False, 0.5)],
    )
    assert not report.ok
    text = format_report(report)
    assert "max |dK|,|dV| = 0.002  MISMATCH" in text
    assert "tokens DIFFER, max |dlogit| = 0.5  MISMATCH" in text
    assert text.endswith("m.gguf: MISMATCH")


def test_verify_rejects_bad_arguments(pykvd_cli):
    result = pykvd_cli("verify", "smollm2", "--restore-steps", "0")
    assert result.returncode == 2 and "pykvd: error:" in result.stderr
    result = pykvd_cli("verify", "/no/such/model.gguf")
    assert result.returncode == 2 and "pykvd: error:" in result.stderr
