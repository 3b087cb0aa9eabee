"""The import contract: pure decision modules import no I/O client, directly or through another module.

The pure modules decide (state machine, rules, deadlines, classification, validation); the service
layer around them talks to Redis, Kafka and HTTP. Keeping the decisions free of clients keeps them
testable without servers and lets a second store or transport come in without touching them. The
import graph is built by grimp (the engine of import-linter), so an import hidden one module deep
breaks the contract too, and the failure prints the chain that does it.
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]

PURE_MODULES = [
    "services.router.workflow",
    "services.router.rules",
    "services.router.sla",
    "services.router.timers",
    "services.router.meetings",
    "services.intake.domain",
    "services.intake.progress",
    "services.intake.media_rules",
    "services.classifier.text",
    "services.classifier.features",
    "services.classifier.grid",
    "services.classifier.rules",
    "services.classifier.model",
    "services.classifier.classification",
    "services.classifier.review",
    "services.notifier.policy",
    "services.notifier.routing",
    "services.notifier.survey",
    "services.notifier.texts",
    "services.notifier.scoring",
    "services.notifier.wechat_template",
    "services.notifier.window",
    "shared.events",
    "shared.text",
    "shared.tickets",
    "shared.city",
    "shared.errors",
    "shared.privacy",
    "shared.lookup_link",
    "shared.knowledge",
    "shared.trend",
    "shared.access",
]
# Pure modules that may or may not exist yet: every file matching is held to the same contract.
PURE_GLOBS = ["shared/decisions.py", "shared/decisions/*.py"]

FORBIDDEN = ["redis", "aiokafka", "faststream", "httpx", "fastapi", "shared.store", "shared.bus"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pure_modules() -> list[str]:
    found = {_module_name(p) for pattern in PURE_GLOBS for p in ROOT.glob(pattern)}
    return PURE_MODULES + sorted(found - set(PURE_MODULES))


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("shared", "services", include_external_packages=True, cache_dir=None)


def test_every_named_pure_module_exists(graph: grimp.ImportGraph) -> None:
    # A renamed module would otherwise drop out of the contract without anyone noticing.
    missing = [m for m in PURE_MODULES if m not in graph.modules]
    assert missing == [], f"pure modules named in this test but not found: {missing}; update PURE_MODULES"


def test_contract_sees_the_clients(graph: grimp.ImportGraph) -> None:
    # The store talks to Redis: if the graph did not show it, every check below would pass vacuously.
    assert graph.find_shortest_chain(importer="shared.store", imported="redis") is not None


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_imports_no_io_client(graph: grimp.ImportGraph, module: str) -> None:
    chains = [
        " -> ".join(chain)
        for forbidden in FORBIDDEN
        if forbidden in graph.modules
        and (chain := graph.find_shortest_chain(importer=module, imported=forbidden))
    ]
    assert chains == [], (
        f"{module} is a pure module but reaches an I/O client: {chains}. Move the I/O into the "
        "service layer, or move the shared types into a module that imports no client."
    )
