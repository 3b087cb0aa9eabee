"""Which grid (网格) an appeal is about: from coordinates, else from place names in the address and
text (the gazetteer built from the city configuration). No grid found is an answer too ("none"),
which sends the appeal to review: never a guess presented as fact.

Pure functions over the city configuration, no I/O.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from shared.city import City
from shared.events import GeoPoint, GridMatch

_HOUSE_NUMBER = re.compile(r"\s*(\d{1,5})\s*号")  # matched at the end of a road name


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
class _Entry:
    grid: str
    kind: str  # compound, landmark, road
    canonical: str
    from_no: int = 0
    to_no: int = 0


class GridLocator:
    # How much each kind of mention says about the grid.
    WEIGHTS = {"compound": 1.0, "landmark": 0.8, "road": 0.6}

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

    def locate(self, text: str, address: str = "", location: GeoPoint | None = None) -> GridMatch:
        if location is not None:
            for gid, info in self.city.grids.items():
                if info.grid.polygon and point_in_polygon(location.lng, location.lat, info.grid.polygon):
                    return self._match(gid, "coordinates", 0.99, f"{location.lng},{location.lat}")
        # The address is what the operator typed as the place: trust it over the narrative.
        for source, weight in ((address, 1.0), (text, 0.8)):
            if source:
                found = self._from_names(source, weight)
                if found:
                    return found
        return GridMatch(grid=None, method="none", confidence=0.0)

    def _from_names(self, source: str, source_weight: float) -> GridMatch | None:
        if self._names is None:
            return None
        scores: dict[str, float] = defaultdict(float)
        evidence: dict[str, str] = {}
        for m in self._names.finditer(source):
            entries = self.by_name[m.group()]
            number = _HOUSE_NUMBER.match(source, m.end())
            for e in entries:
                if e.kind == "road" and number:
                    n = int(number.group(1))
                    if not e.from_no <= n <= e.to_no:
                        continue  # the road runs through this grid, but not this house number
                    weight = 1.0  # a road with a house number in range is as good as a compound
                else:
                    weight = self.WEIGHTS[e.kind]
                # A name shared by several grids says less about each of them.
                weight /= len({x.grid for x in entries})
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
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        best, best_score = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
        if best_score - runner_up < 0.05:
            return None  # a tie: not a fact, let a person decide
        confidence = min(0.98, source_weight * best_score * (1 - runner_up / (best_score + runner_up)))
        return self._match(best, "gazetteer", round(confidence, 3), evidence.get(best, ""))

    def _match(self, gid: str, method: str, confidence: float, evidence: str) -> GridMatch:
        info = self.city.grids[gid]
        return GridMatch(
            grid=gid, community=info.community_id, street=info.street_id, method=method,
            confidence=confidence, evidence=evidence,
        )
