"""The import contract: pure decision modules import no I/O client, directly or through another module,
and no module of another service.

The pure modules decide (state machine, rules, deadlines, classification, validation); the service
layer around them talks to Redis, Kafka and HTTP. Keeping the decisions free of clients keeps them
testable without servers and lets a second store or transport come in without touching them. The
import graph is built by grimp (the engine of import-linter), so an import hidden one module deep
breaks the contract too, and the failure prints the chain that does it.

A service's decisions are its own: what two services read alike (a survey answer in words, what a
resident said beyond it) lives in shared/, not in one service's module the other reaches into, so
that neither changes under the other (the router once read the notifier's survey module for it).
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
    "shared.survey_reply",
]
# Pure modules that may or may not exist yet: every file matching is held to the same contract.
PURE_GLOBS = ["shared/decisions.py", "shared/decisions/*.py"]

SERVICES = ["intake", "classifier", "router", "notifier", "records", "console", "access"]
# A pure module of one service that reads another's, as it stands, and why; each still there (the
# test below says when one is gone, to be struck off). Any other crossing fails.
CROSSINGS_KNOWN = {
    # A progress query (查询) is told apart from a survey reply before either is read: the query's
    # grammar is intake's, which answers it. To move to shared/ as the survey's reading did.
    ("services.notifier.survey", "services.intake"),
}

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


def _crossings(graph: grimp.ImportGraph, module: str) -> dict[str, str]:
    """The other services `module` reaches, each with the chain of imports that does it."""
    own = module.split(".")[1]
    found: dict[str, str] = {}
    for service in SERVICES:
        if service == own:
            continue
        package = f"services.{service}"
        for target in sorted(m for m in graph.modules if m == package or m.startswith(package + ".")):
            if chain := graph.find_shortest_chain(importer=module, imported=target):
                found[package] = " -> ".join(chain)
                break
    return found


SERVICE_PURE_MODULES = [m for m in pure_modules() if m.startswith("services.")]


@pytest.mark.parametrize("module", SERVICE_PURE_MODULES)
def test_pure_module_reads_no_other_service(graph: grimp.ImportGraph, module: str) -> None:
    unknown = {
        target: chain
        for target, chain in _crossings(graph, module).items()
        if (module, target) not in CROSSINGS_KNOWN
    }
    assert unknown == {}, (
        f"{module} is a pure module of its service but reaches another service: {unknown}. "
        "Move what both read into shared/ (as shared.survey_reply), and import it from there."
    )


def test_the_router_reads_nothing_of_the_notifier(graph: grimp.ImportGraph) -> None:
    # The crossing this contract was written for, held for every router module, its service layer
    # and views too: the router hears of surveys by their events, never from the notifier's code.
    notifier = sorted(m for m in graph.modules if m.startswith("services.notifier."))
    assert "services.notifier.survey" in notifier  # else the check below would pass vacuously
    chains = [
        " -> ".join(chain)
        for module in sorted(m for m in graph.modules if m.startswith("services.router."))
        for target in notifier
        if (chain := graph.find_shortest_chain(importer=module, imported=target))
    ]
    assert chains == []


@pytest.mark.parametrize(("module", "target"), sorted(CROSSINGS_KNOWN))
def test_each_known_crossing_is_still_there(graph: grimp.ImportGraph, module: str, target: str) -> None:
    # Gone, it is struck off the list, so that it cannot come back unnoticed.
    assert target in _crossings(graph, module), f"{module} no longer reaches {target}: remove it"
