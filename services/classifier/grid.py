"""Which grid (网格) an appeal is about: from coordinates, else from place names in the address and
text (the gazetteer built from the city configuration), else from a small model over address-like
tokens (for names the gazetteer does not know verbatim: 阳光花苑 for 阳光花园, 东湖新村 ...). No grid
found is an answer too ("none"), which sends the appeal to review: never a guess presented as fact.
When the coordinates (or the patrolling worker's grid) decide and the address alone clearly names
another grid, the match says which (`GridMatch.address_grid`, 定位与地址不一致).

Pure functions over the city configuration, no I/O (the fallback model is fitted from it on load).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from shared.city import City, Place, Road
from shared.events import GeoPoint, GridMatch

# An address names a grid clearly enough to contradict the coordinates with a name of this weight at
# least: a compound or a road with its house number (1.0), a landmark (0.8); not a road alone (0.6).
CLEAR_MENTION = 0.8
TIED_NAMED = 4  # the grids a tie names, at most: enough to ask the caller which, short enough to read

_HOUSE_NUMBER = re.compile(r"\s*(\d{1,5})\s*号")  # matched at the end of a road name
# Address-like tokens: a few Han characters ending the way Chinese place names end.
_PLACE_SUFFIXES = (
    "小区|花园|家园|新村|公寓|宿舍|家属院|大厦|广场|市场|菜市场|公园|小学|中学|学校|医院|商场|中心|"
    "苑|园|里|庭|府|城|湾|居|路|街|大街|道|巷|胡同|村|站"
)
_ADDRESS_TOKEN = re.compile(rf"[\u4e00-\u9fff]{{1,6}}?(?:{_PLACE_SUFFIXES})")
_NAME_SUFFIX = re.compile(rf"(?:{_PLACE_SUFFIXES})$")


def grid_match(city: City, gid: str, method: str, confidence: float, evidence: str) -> GridMatch:
    """A match of the grid `gid`, with the community and street the city places it in."""
    info = city.grids[gid]
    return GridMatch(
        grid=gid,
        community=info.community_id,
        street=info.street_id,
        method=method,
        confidence=confidence,
        evidence=evidence,
    )


def address_tokens(text: str) -> str:
    """The parts of a text that look like place names, joined; "" when there are none."""
    return " ".join(_ADDRESS_TOKEN.findall(text))


class GridModel:
    """Character n-gram TF-IDF of place names, nearest name by cosine similarity -> its grid. Fitted
    on the gazetteer's names and their stems (阳光花园 -> 阳光), so a variant that shares most of a name
    (阳光花苑, 翠竹花园) finds it. Used only when the gazetteer finds no name. The confidence is the
    similarity, discounted when another grid's name is nearly as close; below `min_confidence` there
    is no grid."""

    min_confidence = 0.45

    def __init__(self, city: City) -> None:
        names, grids = [], []
        for gid, info in city.grids.items():
            g = info.grid
            places: list[Place | Road] = [*g.compounds, *g.landmarks, *g.roads]
            for name in sorted({n for p in places for n in (p.name, *p.aliases)}):
                for variant in sorted({name, _NAME_SUFFIX.sub("", name)} - {""}):
                    names.append(variant)
                    grids.append(gid)
        self.vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(names)
        self.grids = np.asarray(grids)

    def predict(self, tokens: str) -> tuple[str, float] | None:
        return self.predict_many([tokens])[0]

    def predict_many(self, tokens: list[str]) -> list[tuple[str, float] | None]:
        """One guess per token string (None: no place-like tokens, or not confident)."""
        out: list[tuple[str, float] | None] = [None] * len(tokens)
        todo = [i for i, t in enumerate(tokens) if t]
        if not todo:
            return out
        sims = (self.vectorizer.transform([tokens[i] for i in todo]) @ self.matrix.T).toarray()
        for row, i in zip(sims, todo, strict=False):
            best = int(np.argmax(row))
            other = row[self.grids != self.grids[best]]
            runner_up = float(other.max()) if len(other) else 0.0
            confidence = float(row[best]) * (1 - runner_up / (row[best] + runner_up + 1e-9) / 2)
            if confidence >= self.min_confidence:
                out[i] = (str(self.grids[best]), confidence)
        return out


def point_in_polygon(lng: float, lat: float, polygon: tuple[tuple[float, float], ...]) -> bool:
    """Ray casting; points on an edge may fall either side, which is fine for adjacent grids."""
    inside = False
    j = len(polygon) - 1
    for i, (xi, yi) in enumerate(polygon):
        xj, yj = polygon[j]
        if (yi > lat) != (yj > lat) and lng < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


@dataclass(frozen=True)
class _Named:
    scores: dict[str, float]  # grid -> how strongly the names point to it
    evidence: dict[str, str]  # grid -> the name (and house number) that matched it
    kinds: dict[str, float]  # grid -> its best name's own weight, before sharing: 1.0 a compound
    own: frozenset[str]  # the grids named by a name no other grid has (幸福里 is two grids')


@dataclass(frozen=True)
class _Entry:
    grid: str
    kind: str  # compound, landmark, road
    canonical: str
    from_no: int = 0
    to_no: int = 0


class GridLocator:
    # How much each kind of mention says about the grid.
    WEIGHTS: ClassVar[dict[str, float]] = {"compound": 1.0, "landmark": 0.8, "road": 0.6}

    def __init__(self, city: City) -> None:
        self.city = city
        self.by_name: dict[str, list[_Entry]] = defaultdict(list)
        for gid, info in city.grids.items():
            g = info.grid
            for kind, places in (("compound", g.compounds), ("landmark", g.landmarks)):
                for p in places:
                    for name in (p.name, *p.aliases):
                        self.by_name[name].append(_Entry(gid, kind, p.name))
            for r in g.roads:
                for name in (r.name, *r.aliases):
                    self.by_name[name].append(_Entry(gid, "road", r.name, r.from_no, r.to_no))
        # Longest names first, so "阳光花园二期" is found before "阳光花园".
        names = sorted(self.by_name, key=len, reverse=True)
        self._names = re.compile("|".join(map(re.escape, names))) if names else None
        areas = {i.street_name: ("street", i.street_id) for i in city.grids.values()}
        areas.update({i.community_name: ("community", i.community_id) for i in city.grids.values()})
        self._areas = areas
        self._area_re = re.compile("|".join(map(re.escape, sorted(areas, key=len, reverse=True))))
        self.model = GridModel(city)

    def locate(
        self, text: str, address: str = "", location: GeoPoint | None = None, patrol_grid: str | None = None
    ) -> GridMatch:
        return self.locate_many([(text, address, location, patrol_grid)])[0]

    def locate_many(self, appeals: list[tuple[str, str, GeoPoint | None, str | None]]) -> list[GridMatch]:
        """`locate` for a batch: the fallback model runs once for all the appeals that need it."""
        found = [self._without_model(*a) for a in appeals]
        need = [i for i, m in enumerate(found) if m is None]
        tokens = [address_tokens(appeals[i][1]) or address_tokens(appeals[i][0]) for i in need]
        for i, t, guess in zip(need, tokens, self.model.predict_many(tokens), strict=False):
            if guess is None:
                found[i] = GridMatch(grid=None, method="none", confidence=0.0)
            else:
                found[i] = grid_match(self.city, guess[0], "model", round(guess[1], 3), t)
        return found  # type: ignore[return-value]

    def _without_model(
        self, text: str, address: str, location: GeoPoint | None, patrol_grid: str | None = None
    ) -> GridMatch | None:
        """Coordinates, else the grid of the grid worker who reported it, else the gazetteer; a tie
        is a final answer (none); None: ask the model."""
        # The coordinates, else the worker's grid, stay the appeal's grid even when the address alone
        # names another one (定位与地址不一致): the match then says which (`address_grid`), and a
        # person settles it where it matters (`City.place_disputed`). Neither source is right every
        # time: a WeChat location is where the phone was, maybe the resident's home, and an address
        # may be a landmark the problem is near; a stale fix or a mistyped address either way. And a
        # patrol report placed by its address would leave the grid of the worker who reported it, who
        # could no longer read or follow it (a grid worker reads its grid's tickets only).
        if location is not None:
            for gid, info in self.city.grids.items():
                if info.grid.polygon and point_in_polygon(location.lng, location.lat, info.grid.polygon):
                    at = f"{location.lng},{location.lat}"
                    return self._checked_against(grid_match(self.city, gid, "coordinates", 0.99, at), address)
        # A grid worker reports what it finds in its own grid; a place named in the text may be a
        # landmark across the street, so the worker's grid is the better answer.
        if patrol_grid in self.city.grids:
            patrol = grid_match(self.city, patrol_grid, "patrol", 0.95, "网格员巡查上报")
            return self._checked_against(patrol, address)
        # The address is what the operator typed as the place: trust it over the narrative.
        for source, weight in ((address, 1.0), (text, 0.8)):
            if source:
                found = self._from_names(source, weight)
                if found:
                    return found
        return None

    def _checked_against(self, found: GridMatch, address: str) -> GridMatch:
        """`found` (by coordinates or the patrol), with the grid the address names if another."""
        elsewhere = self._address_elsewhere(address, found.grid or "")
        return found if elsewhere is None else found.model_copy(update={"address_grid": elsewhere})

    def _address_elsewhere(self, address: str, located: str) -> str | None:
        """The grid the address alone names when it is clearly another than `located` (the grid of
        the coordinates, or of the patrolling worker): the gazetteer's answer on the address is one
        grid (not a tie; the model's guesses are not asked), named by a compound, a landmark or a
        road with a house number in its stretch, and the address names nothing of `located`'s own
        (翠竹苑 by 和平里菜市场 names both; 建设街道幸福里 only the 幸福里 of 建设街道, though another
        grid has a 幸福里 too). A road named without a number is left out: grids meet along roads,
        and a fix across the road is no disagreement. None otherwise (no address, the same grid, a
        tie, only a road)."""
        if not address:
            return None
        named = self._named(address)
        if named is None or located in named.own:
            return None
        found = self._decided(named, 1.0)
        if found.grid is None or named.kinds[found.grid] < CLEAR_MENTION:
            return None
        return found.grid

    def _from_names(self, source: str, source_weight: float) -> GridMatch | None:
        named = self._named(source)
        return None if named is None else self._decided(named, source_weight)

    def _named(self, source: str) -> _Named | None:
        """The grids the place names in `source` point to, scored; None when it names none."""
        if self._names is None:
            return None
        scores: dict[str, float] = defaultdict(float)
        evidence: dict[str, str] = {}
        kinds: dict[str, float] = defaultdict(float)
        own: set[str] = set()
        for m in self._names.finditer(source):
            entries = self.by_name[m.group()]
            number = _HOUSE_NUMBER.match(source, m.end())
            if number and any(e.kind == "road" for e in entries):
                n = int(number.group(1))
                # The road runs through several grids; the house number says which stretch.
                in_range = [e for e in entries if e.kind != "road" or e.from_no <= n <= e.to_no]
                entries = in_range or entries
            sharing = len({x.grid for x in entries})
            if sharing == 1:
                own.add(entries[0].grid)
            for e in entries:
                if e.kind == "road" and number and e.from_no <= int(number.group(1)) <= e.to_no:
                    weight = 1.0  # a road with a house number in range is as good as a compound
                else:
                    weight = self.WEIGHTS[e.kind]
                kinds[e.grid] = max(kinds[e.grid], weight)
                # A name shared by several grids says less about each of them.
                weight /= sharing
                if weight > scores[e.grid]:
                    evidence[e.grid] = m.group() + (number.group() if number and e.kind == "road" else "")
                scores[e.grid] = max(scores[e.grid], weight)
        if not scores:
            return None
        # Street and community mentions settle ambiguity between grids.
        for m in self._area_re.finditer(source):
            kind, area_id = self._areas[m.group()]
            for gid in scores:
                info = self.city.grids[gid]
                if (info.street_id if kind == "street" else info.community_id) == area_id:
                    scores[gid] += 0.3
        return _Named(dict(scores), evidence, dict(kinds), frozenset(own))

    def _decided(self, named: _Named, source_weight: float) -> GridMatch:
        """The grid the names point to, or none when two or more are as likely (a tie)."""
        scores, evidence = named.scores, named.evidence
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        best, best_score = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
        if best_score - runner_up < 0.05:
            # A tie between grids: not a fact, and no model should pick for a person.
            grids = [g for g, sc in ranked if best_score - sc < 0.05]
            tied = "、".join(sorted({evidence[g] for g in grids}))
            # Which grids, by name: the operator asks the caller which one (和平里的幸福里, or 建设路的?).
            which = "、".join(self.city.grids[g].full_name for g in sorted(grids)[:TIED_NAMED])
            more = f"等{len(grids)}个网格" if len(grids) > TIED_NAMED else ""
            return GridMatch(
                grid=None, method="none", confidence=0.0, evidence=f"多个网格都有：{tied}（{which}{more}）"
            )
        confidence = min(0.98, source_weight * best_score * (1 - runner_up / (best_score + runner_up)))
        return grid_match(self.city, best, "gazetteer", round(confidence, 3), evidence.get(best, ""))
