"""A believable football match as a pure state machine: no I/O, no clock.

:meth:`Match.advance` moves a match on by one match minute and returns that
minute's events as ``(kind, patch)`` pairs, ``patch`` being the JSON Merge
Patch from the previous state; :attr:`Match.state` is the state after them.
Timeline of one fixture on a topic::

    (no state) --kickoff--> 1H --45'+added--> HT --halftime--> 2H --90'+added--> FT
    FT --break, only when looping--> kickoff of the next fixture, same topic

A match state, kept small (the last :data:`KEPT_EVENTS` events only)::

    {"id": 1000, "minute": 34, "period": "1H", "status": "live",
     "home": {"name": "Eastport City", "code": "EPC", "score": 1, "red": 0, "subs": 0},
     "away": {...}, "events": [{"minute": 23, "kind": "goal", "team": "home", ...}]}

``added`` appears during stoppage time (``"minute": 45, "added": 2`` is 45+2').
Event kinds: ``kickoff``, ``clock``, ``goal``, ``card``, ``substitution``,
``period`` (HT, and the second-half kick-off) and ``fulltime``.

Teams come from a :class:`League`: a simulator running several topics gives
them one, and a club drawn for a fixture is not drawn for another until its
fixture's topic kicks off the next one, so no club plays two matches at once.

Lineups are not in the state. A squad is a function of the team's code, and a
match resumed from a stored state rebuilds who is on the pitch from the events
still listed there: a best effort, exact for the last few events.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scorecast.protocol.merge_patch import apply_patch, diff

__all__ = ["KEPT_EVENTS", "TEAMS", "League", "Match", "league_teams", "live_line"]

KEPT_EVENTS = 5

TEAMS = (
    ("Eastport City", "EPC"),
    ("Eastport Albion", "EPA"),
    ("Northbridge Rovers", "NBR"),
    ("Ashford Athletic", "ASH"),
    ("Kingsmoor United", "KMU"),
    ("Redcliffe Town", "RCT"),
    ("Westfield Wanderers", "WFW"),
    ("Millbrook FC", "MIL"),
    ("Stonegate County", "STG"),
    ("Riverside Rangers", "RIV"),
    ("Oakhaven City", "OKC"),
    ("Blackwater Borough", "BWB"),
    ("Fairhill Forest", "FHF"),
    ("Lakeshore Dynamo", "LKD"),
    ("Greywood Park", "GWP"),
    ("Summerton Villa", "SUV"),
)

# more clubs for simulators with more than len(TEAMS) / 2 matches: town and suffix
_TOWNS = (
    "Alderney", "Brackenby", "Coldharbour", "Dunmere", "Elmsworth", "Foxley", "Glenrock",
    "Hartwell", "Ironbridge", "Juniper Bay", "Kestrel Hill", "Longmarsh", "Marlow Heath",
    "Newhaven", "Orchard Vale", "Pinecrest", "Queensbury", "Rookhampton", "Saltmarsh",
    "Thornbury", "Upton Cross", "Valebridge", "Whitcombe", "Yarrowdale",
)  # fmt: skip
_SUFFIXES = ("United", "Town", "City", "Athletic", "Rovers", "Albion", "Wanderers", "County")

# fmt: off
_SURNAMES = (
    "Adeyemi", "Almeida", "Andersen", "Baptiste", "Barros", "Bergstrom", "Brennan", "Castillo",
    "Costa", "Dimitrov", "Dubois", "Eriksen", "Fernandes", "Fischer", "Gallagher", "Garcia",
    "Haddad", "Hansen", "Ibrahim", "Ivanov", "Jensen", "Kamara", "Keller", "Kovac", "Larsen",
    "Lindqvist", "Lopez", "Mahrez", "Marchetti", "Mendes", "Moreau", "Murphy", "Nakamura",
    "Navarro", "Novak", "Okafor", "Olsen", "Osei", "Park", "Petrov", "Quinn", "Ramos", "Reyes",
    "Rossi", "Santos", "Schmidt", "Silva", "Sorensen", "Takahashi", "Traore", "Valdez", "Varga",
    "Weber", "Wojcik", "Yilmaz", "Zielinski",
)
# fmt: on

# Per team and minute in play. About 2.5 goals, 3.5 bookings and 0.1 straight
# reds a match; substitutions mostly after the hour.
_GOAL = {"home": 0.0145, "away": 0.0120}
_YELLOW = 0.019
_RED = 0.0006
_MAX_SUBS = 5
_MIN_PLAYERS = 9  # no more red cards once a side is down to this: keeps it believable
_SHOOTERS = (0, 1, 1, 1, 1, 3, 3, 3, 3, 6, 6)  # scoring weight by shirt: GK, DEF, MID, FWD


@dataclass
class _Side:
    on_pitch: list[str]
    bench: list[str]
    booked: set[str] = field(default_factory=set)


def _squad(code: str) -> _Side:
    """A team's 18: eleven starters (keeper first, forwards last), seven on the bench."""
    names = random.Random(f"squad:{code}").sample(_SURNAMES, 18)
    return _Side(on_pitch=names[:11], bench=names[11:])


def _is_match(state: Any) -> bool:
    try:
        return (
            state["period"] in ("1H", "HT", "2H", "FT")
            and isinstance(state["minute"], int)
            and all(isinstance(state[team]["score"], int) for team in ("home", "away"))
            and all(isinstance(state[team]["code"], str) for team in ("home", "away"))
            and isinstance(state["events"], list)
        )
    except (KeyError, TypeError):
        return False


def live_line(state: Any) -> dict[str, Any] | None:
    """A match's compact line on the ``football.live`` board."""
    if not _is_match(state):
        return None
    home, away = state["home"], state["away"]
    return {
        "home": home["code"],
        "away": away["code"],
        "score": f"{home['score']}-{away['score']}",
        "minute": state["minute"],
        "period": state["period"],
    }


def league_teams(count: int) -> tuple[tuple[str, str], ...]:
    """At least ``count`` clubs as ``(name, code)``, unique names and codes:
    :data:`TEAMS` first, then towns with suffixes, then reserve sides (``II``...)."""
    teams = list(TEAMS)
    codes = {code for _, code in teams}

    def add(name: str, stem: str) -> None:
        code, extra = stem, 1
        while code in codes:
            extra += 1
            code = f"{stem}{extra}"
        codes.add(code)
        teams.append((name, code))

    for suffix in _SUFFIXES:
        for town in _TOWNS:
            if len(teams) >= count:
                return tuple(teams)
            add(f"{town} {suffix}", (town.replace(" ", "")[:2] + suffix[0]).upper())
    first, reserve = tuple(teams), 2
    while len(teams) < count:
        for name, code in first[: count - len(teams)]:
            add(f"{name} {_roman(reserve)}", f"{code}{reserve}")
        reserve += 1
    return tuple(teams)


def _roman(number: int) -> str:
    digits = []
    for value, letters in zip(
        (1000, 900, 500, 400, 100, 90, 50, 40, 10, 9, 5, 4, 1),
        ("M", "CM", "D", "CD", "C", "XC", "L", "XL", "X", "IX", "V", "IV", "I"),
        strict=True,
    ):
        count, number = divmod(number, value)
        digits.append(letters * count)
    return "".join(digits)


class League:
    """The clubs of one simulator, and how many fixtures each is in now.

    :meth:`draw` picks two clubs not on a pitch; :meth:`hold` and
    :meth:`release` count a fixture's clubs in and out (a count, not a set, so
    fixtures stored by an older simulator with a club twice still add up).
    """

    def __init__(self, teams: Iterable[tuple[str, str]] = TEAMS) -> None:
        self.teams = tuple(teams)
        self.playing: Counter[str] = Counter()

    @classmethod
    def for_matches(cls, matches: int) -> League:
        """Clubs enough that every one of ``matches`` can always find two free ones."""
        return cls(league_teams(max(len(TEAMS), 2 * matches)))

    def draw(self, rng: random.Random) -> list[tuple[str, str]]:
        free = [team for team in self.teams if not self.playing[team[1]]]
        if len(free) < 2:
            raise RuntimeError(f"no two free clubs among {len(self.teams)}: a larger league")
        return rng.sample(free, 2)

    def hold(self, codes: Iterable[str]) -> None:
        self.playing.update(codes)

    def release(self, codes: Iterable[str]) -> None:
        self.playing.subtract(codes)
        for code in [code for code, count in self.playing.items() if count <= 0]:
            del self.playing[code]


class Match:
    """One topic's fixtures, one after another; ``rng`` makes it reproducible.

    ``league`` is shared by the matches of one simulator (default: a league of
    this match alone, so any two of :data:`TEAMS`).
    """

    def __init__(
        self,
        match_id: int,
        rng: random.Random,
        *,
        state: Any = None,
        loops: bool = True,
        halftime_minutes: int = 15,
        break_minutes: int = 10,
        league: League | None = None,
    ) -> None:
        self.id = match_id
        self.rng = rng
        self.league = league if league is not None else League()
        self._holding: tuple[str, ...] = ()  # the codes this match counts in its league
        self.loops = loops
        self.halftime_minutes = halftime_minutes
        self.break_minutes = break_minutes
        self.state: Any = None
        self._sides: dict[str, _Side] = {}
        self._idle = 0  # minutes spent at half time or since full time
        self._planned_added: int | None = None
        self.resume(state)

    @property
    def finished(self) -> bool:
        """Over for good: at full time and not looping to another fixture."""
        return not self.loops and _is_match(self.state) and self.state["period"] == "FT"

    def resume(self, state: Any) -> None:
        """Take ``state`` (as stored) as the current one."""
        if state == self.state:
            return
        self.state = state
        self._hold()
        self._idle = 0
        self._planned_added = None
        if not _is_match(state):
            return
        self._sides = {team: _squad(state[team]["code"]) for team in ("home", "away")}
        for event in state["events"]:
            side = self._sides.get(event.get("team"))
            if side is not None:
                _replay_on(side, event)

    def advance(self) -> list[tuple[str, dict[str, Any]]]:
        """One match minute on; its events, maybe none (half time, after full time)."""
        events = self._advance()
        if events:
            self._hold()
        return events

    def _hold(self) -> None:
        """Count this fixture's clubs in its league until the topic's next kick-off.

        Not released at full time: a simulator publishes a minute's events after
        :meth:`advance` returns them, so another topic's kick-off drawn at that
        moment could be stored before this full time. The next kick-off on this
        topic comes only after its full time is stored.
        """
        state = self.state
        codes = tuple(state[team]["code"] for team in ("home", "away")) if _is_match(state) else ()
        if codes != self._holding:
            self.league.release(self._holding)
            self.league.hold(codes)
            self._holding = codes

    def _advance(self) -> list[tuple[str, dict[str, Any]]]:
        if not _is_match(self.state):
            return [self._kickoff()]
        period = self.state["period"]
        if period == "HT":
            self._idle += 1
            if self._idle < self.halftime_minutes:
                return []
            return self._second_half()
        if period == "FT":
            if not self.loops:
                return []
            self._idle += 1
            return [self._kickoff()] if self._idle >= self.break_minutes else []
        return self._play_minute()

    # --- the timeline -----------------------------------------------------------

    def _kickoff(self) -> tuple[str, dict[str, Any]]:
        self.league.release(self._holding)  # the previous fixture is over, if any
        self._holding = ()
        (home, home_code), (away, away_code) = self.league.draw(self.rng)
        self._sides = {"home": _squad(home_code), "away": _squad(away_code)}
        self._idle = 0
        self._planned_added = None
        new = {
            "id": self.id,
            "home": {"name": home, "code": home_code, "score": 0, "red": 0, "subs": 0},
            "away": {"name": away, "code": away_code, "score": 0, "red": 0, "subs": 0},
            "minute": 0,
            "period": "1H",
            "status": "live",
            "events": [{"minute": 0, "kind": "kickoff"}],
        }
        patch = diff(self.state, new)
        self.state = new
        return "kickoff", patch

    def _second_half(self) -> list[tuple[str, dict[str, Any]]]:
        self._idle = 0
        events: list[tuple[str, dict[str, Any]] | None]
        events = [self._apply("period", {"period": "2H", "minute": 45}, period="2H")]
        for team in ("home", "away"):  # managers like to change things at the break
            if self.rng.random() < 0.3:
                events.append(self._substitution(team))
        return [event for event in events if event is not None]

    def _play_minute(self) -> list[tuple[str, dict[str, Any]]]:
        state = self.state
        end = 45 if state["period"] == "1H" else 90
        if state["minute"] < end:
            clock = {"minute": state["minute"] + 1}
        else:
            clock = {"added": state.get("added", 0) + 1}
        events = [self._apply_patch("clock", clock)]
        incidents = [self._goal, self._card, self._substitution_chance]
        self.rng.shuffle(incidents)
        for team in ("home", "away"):
            for incident in incidents:
                event = incident(team)
                if event is not None:
                    events.append(event)
        if self.state["minute"] == end:
            if self._planned_added is None:
                planned = self.rng.randint(0, 4) if end == 45 else self.rng.randint(1, 6)
                self._planned_added = max(planned, self.state.get("added", 0))
            if self.state.get("added", 0) >= self._planned_added:
                events.append(self._end_of_half(end))
        return events

    def _end_of_half(self, end: int) -> tuple[str, dict[str, Any]]:
        self._planned_added = None
        self._idle = 0
        no_added = {"added": None} if "added" in self.state else {}
        if end == 45:
            return self._apply("period", {"period": "HT", **no_added}, period="HT")
        home, away = self.state["home"]["score"], self.state["away"]["score"]
        patch = {"period": "FT", "status": "finished", **no_added}
        return self._apply("fulltime", patch, score=f"{home}-{away}")

    # --- incidents ----------------------------------------------------------------

    def _goal(self, team: str) -> tuple[str, dict[str, Any]] | None:
        side = self._sides[team]
        chance = _GOAL[team] * 0.75 ** self.state[team].get("red", 0)
        if self.rng.random() >= chance:
            return None
        weights = [_SHOOTERS[min(i, 10)] for i in range(len(side.on_pitch))]
        scorer = self.rng.choices(side.on_pitch, weights=weights)[0]
        score = self.state[team]["score"] + 1
        home = score if team == "home" else self.state["home"]["score"]
        away = score if team == "away" else self.state["away"]["score"]
        return self._apply(
            "goal", {team: {"score": score}}, team=team, player=scorer, score=f"{home}-{away}"
        )

    def _card(self, team: str) -> tuple[str, dict[str, Any]] | None:
        side = self._sides[team]
        roll = self.rng.random()
        if roll >= _YELLOW + _RED or len(side.on_pitch) <= _MIN_PLAYERS:
            return None
        player = self.rng.choice(side.on_pitch[1:])  # keepers are rarely booked
        if roll < _YELLOW and player not in side.booked:
            side.booked.add(player)
            return self._apply("card", {}, team=team, player=player, card="yellow")
        if roll < _YELLOW and self.rng.random() >= 0.3:  # a booked player mostly calms down
            return None
        side.on_pitch.remove(player)
        details = {"second_yellow": True} if roll < _YELLOW else {}
        red = {team: {"red": self.state[team].get("red", 0) + 1}}
        return self._apply("card", red, team=team, player=player, card="red", **details)

    def _substitution_chance(self, team: str) -> tuple[str, dict[str, Any]] | None:
        if self.state["period"] != "2H":
            return None
        minute = self.state["minute"]
        chance = 0.01 if minute < 55 else 0.05 if self.state.get("added") else 0.08
        if self.rng.random() >= chance:
            return None
        return self._substitution(team)

    def _substitution(self, team: str) -> tuple[str, dict[str, Any]] | None:
        side = self._sides[team]
        used = self.state[team].get("subs", 0)
        if used >= _MAX_SUBS or not side.bench or len(side.on_pitch) < 2:
            return None
        out = self.rng.choice(side.on_pitch[1:])
        into = side.bench.pop(self.rng.randrange(len(side.bench)))
        side.on_pitch[side.on_pitch.index(out)] = into
        side.booked.discard(out)
        subs = {team: {"subs": used + 1}}
        return self._apply("substitution", subs, team=team, player_in=into, player_out=out)

    # --- building patches ---------------------------------------------------------

    def _apply(
        self, kind: str, patch: dict[str, Any], **details: Any
    ) -> tuple[str, dict[str, Any]]:
        """``patch`` plus this event appended to the state's recent events."""
        event = {"minute": self.state["minute"], "kind": kind, **details}
        if self.state.get("added"):
            event["added"] = self.state["added"]
        patch = {**patch, "events": [*self.state["events"], event][-KEPT_EVENTS:]}
        return self._apply_patch(kind, patch)

    def _apply_patch(self, kind: str, patch: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.state = apply_patch(self.state, patch)
        return kind, patch


def _replay_on(side: _Side, event: dict[str, Any]) -> None:
    """Bring a rebuilt lineup up to date with one recorded event."""
    if event.get("kind") == "substitution":
        out, into = event.get("player_out"), event.get("player_in")
        if out in side.on_pitch and into in side.bench:
            side.on_pitch[side.on_pitch.index(out)] = into
            side.bench.remove(into)
    elif event.get("kind") == "card":
        player = event.get("player")
        if not isinstance(player, str):
            return
        if event.get("card") == "yellow":
            side.booked.add(player)
        elif player in side.on_pitch:
            side.on_pitch.remove(player)
