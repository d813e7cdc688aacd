"""What the import-layering contracts (``make lint`` runs ``lint-imports``) cannot see: attribute access.

transformer-lens stays behind the model layer: outside ``interp/model/`` no code reads ``Model.bridge`` or
the bridge's private attributes; what other stages need is a public method of ``Model``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ln_final.hook_* are hook names, which are public
BRIDGE = re.compile(r"\.bridge\b|\boriginal_model\b|_original_component\b|\bln_final\b(?!\.hook_)")


def test_only_the_model_layer_touches_the_bridge():
    offenders = []
    for path in [*ROOT.glob("interp/**/*.py"), *ROOT.glob("cli/*.py")]:
        if path.is_relative_to(ROOT / "interp" / "model"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if BRIDGE.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_a_violation(tmp_path):
    assert BRIDGE.search("head = [model.bridge.unembed]") and BRIDGE.search("m._original_component.weight")
    assert BRIDGE.search("scale = bridge_model.ln_final.w") and not BRIDGE.search('acts["ln_final.hook_scale"]')
    assert not BRIDGE.search("from interp.model import Model")
