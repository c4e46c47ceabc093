"""The fan-out's policy, with a sink that records what it is given: writes at
publish time, pause and catch-up (conflated), overflow, stall, heartbeats."""

from __future__ import annotations

from app.ports import Ending
from app.state.events import Event
from app.streams.admission import Streams
from app.streams.eventlog import Cursor, RecentEvents
from app.streams.fanout import HEARTBEAT_BUCKETS, HEARTBEAT_ROUNDS, Fanout, Subscription
from tests.sinks import Recorder, line_form


def event(seq: int, channel: str = "trades:BTC_USD", conflatable: bool = False, ts: int = 0) -> Event:
    name = "orderbook" if conflatable else "trade"
    return Event(seq, channel, name, b"{}", event_id=f"e-{seq}", conflatable=conflatable, received_ts=ts)


class World:
    def __init__(self, replay: int = 100, latest: list[Event] | None = None) -> None:
        self.log = RecentEvents(replay, 600_000)
        self.streams = Streams(100, 100)
        self.snapshots = latest or []
        self.fanout = Fanout(self, self.streams, send_timeout_s=10)  # type: ignore[arg-type]

    # What the fan-out reads of its event log.
    def since(
        self, seq: int, channels: frozenset[str], books: frozenset[str] = frozenset()
    ) -> list[Event] | None:
        return self.log.since(seq, channels, books)

    def latest(self, channels: frozenset[str]) -> list[Event]:
        return [e for e in self.snapshots if e.channel in channels]

    def publish(self, e: Event) -> None:
        self.log.append(e)
        self.fanout.publish(e)

    def follow(self, *channels: str, capacity: int = 10) -> tuple[Subscription, Recorder]:
        sub = self.fanout.subscribe("address:a", capacity)
        self.fanout.retarget(sub, frozenset(channels))
        sink = Recorder()
        self.fanout.attach(sub, sink, b"")
        return sub, sink


def test_cursor_parse() -> None:
    assert Cursor.parse("ab12-42") == Cursor("ab12", 42)
    assert Cursor.parse("garbage") is None
    assert Cursor.parse("ab-") is None
    assert Cursor.parse("-5") is None


def test_publish_writes_to_every_follower_at_once_and_no_one_else() -> None:
    world = World()
    _, trades = world.follow("trades:BTC_USD")
    _, books = world.follow("book")
    world.publish(event(1))
    world.publish(event(2, "book", conflatable=True))
    assert trades.seqs() == [1] and books.seqs() == [2]
    assert world.streams.events_sent == 2


def test_events_before_attach_are_written_with_the_opening() -> None:
    world = World()
    sub = world.fanout.subscribe("address:a", 10)
    world.fanout.retarget(sub, frozenset({"trades:BTC_USD"}))
    world.publish(event(1))  # between the backlog and the sink: parked
    sink = Recorder()
    world.fanout.attach(sub, sink, b"open\n")
    world.publish(event(2))
    assert sink.data.startswith(b"open\n") and sink.seqs() == [1, 2]


def test_a_paused_stream_catches_up_conflated_in_one_write() -> None:
    world = World()
    sub, sink = world.follow("book", "trades:BTC_USD")
    world.publish(event(1, "book", conflatable=True))
    sub.pause()
    for seq, snap in [(2, True), (3, False), (4, True), (5, False)]:
        world.publish(event(seq, "book" if snap else "trades:BTC_USD", conflatable=snap))
    assert sink.seqs() == [1]
    sub.resume()
    assert sink.seqs() == [1, 3, 4, 5]  # the latest book only; every trade, in order
    world.publish(event(6))
    assert sink.seqs()[-1] == 6


def test_missing_more_log_events_than_the_capacity_overflows() -> None:
    world = World()
    sub, sink = world.follow("trades:BTC_USD", capacity=2)
    sub.pause()
    for seq in range(1, 4):
        world.publish(event(seq))
    assert sink.ended is Ending.OVERFLOW and sub.ended is Ending.OVERFLOW
    assert world.streams.overflow_closes == 1 and world.streams.open == 0
    assert world.fanout.subscribers("trades:BTC_USD") == 0


def test_past_the_log_only_snapshots_can_be_caught_up() -> None:
    latest = [event(9, "book", conflatable=True)]
    world = World(replay=2, latest=latest)
    books, book_sink = world.follow("book")
    trades, trade_sink = world.follow("trades:BTC_USD")
    books.pause()
    trades.pause()
    for seq in range(1, 6):
        world.publish(event(seq))
    world.publish(latest[0])
    books.resume()
    assert book_sink.seqs() == [9]  # the current book stands for the ones the log lost
    trades.resume()
    assert trade_sink.ended is Ending.OVERFLOW  # trades it missed are gone: resume, then reset


def test_tick_asks_idle_streams_for_heartbeats_and_drops_stalled_ones() -> None:
    world = World()
    idle, idle_sink = world.follow("a")
    stuck, stuck_sink = world.follow("b")
    stuck.pause()
    assert stuck.paused_at is not None
    world.fanout.tick(stuck.paused_at + 5, heartbeat_s=15)
    assert stuck.ended is None and idle_sink.heartbeats == 0
    world.fanout.tick(idle.last_write + 16, heartbeat_s=15)
    assert idle_sink.heartbeats == 1
    assert stuck.ended is Ending.STALLED and stuck_sink.ended is Ending.STALLED
    assert world.streams.stalled_closes == 1


def test_heartbeats_look_at_a_share_of_the_streams_per_tick_and_reach_every_idle_one() -> None:
    world = World()
    follows = [world.follow(f"c{i}") for i in range(HEARTBEAT_BUCKETS * 2)]
    start = max(sub.last_write for sub, _ in follows)
    world.fanout.tick(start, heartbeat_s=15)  # the first tick looks at all: none is idle yet
    turn = 15 / HEARTBEAT_ROUNDS
    beats: dict[int, float] = {}
    now = start
    while now < start + 15 + turn + 1:
        now += 0.5
        world.fanout.tick(now, heartbeat_s=15)
        for index, (_, sink) in enumerate(follows):
            if sink.heartbeats and index not in beats:
                beats[index] = now
        # A tick of 0.5 s looks at the share of the wheel that 0.5 s of a turn stands for.
        assert len([t for t in beats.values() if t == now]) <= len(follows) * 0.5 / turn
    assert sorted(beats) == list(range(len(follows))), "every idle stream got its heartbeat"
    assert all(start + 15 <= t <= start + 15 + turn + 0.5 for t in beats.values())
    assert all(sink.heartbeats == 1 for _, sink in follows)


def test_heartbeats_reach_a_stream_that_came_during_a_turn_and_no_ended_one() -> None:
    world = World()
    follows = [world.follow(f"c{i}") for i in range(6)]
    start = max(sub.last_write for sub, _ in follows)
    world.fanout.tick(start, heartbeat_s=15)
    world.fanout.tick(start + 0.5, heartbeat_s=15)  # a turn of the wheel begins
    for sub, _ in follows[1:]:
        world.fanout.end(sub, Ending.GONE)
    late, late_sink = world.follow("late")
    late.last_write = start + 0.5
    now = start + 0.5
    beat_at = None
    while now < start + 0.5 + 15 + 15 / HEARTBEAT_ROUNDS + 0.5:
        now += 0.5
        world.fanout.tick(now, heartbeat_s=15)
        if late_sink.heartbeats and beat_at is None:
            beat_at = now
    assert all(sink.heartbeats == 0 for _, sink in follows[1:])  # ended
    assert follows[0][1].heartbeats == 1 and late_sink.heartbeats == 1
    assert beat_at is not None and start + 0.5 + 15 <= beat_at <= start + 0.5 + 15 + 15 / HEARTBEAT_ROUNDS + 0.5


def test_a_turn_of_the_heartbeat_wheel_takes_its_time_though_ticks_come_late() -> None:
    """Ticks a little over 0.5 s apart, as a loop gives them: a turn still
    takes a fifth of the interval (six ticks at 15 s), not fewer."""
    world = World()
    follows = [world.follow(f"c{i}") for i in range(HEARTBEAT_BUCKETS)]
    start = max(sub.last_write for sub, _ in follows)
    world.fanout.tick(start + 14.9, heartbeat_s=15)  # none idle yet
    ticks = [start + 14.9 + 0.5001 * n for n in range(1, 9)]
    looked = []
    for now in ticks:
        before = sum(sink.heartbeats for _, sink in follows)
        world.fanout.tick(now, heartbeat_s=15)
        looked.append(sum(sink.heartbeats for _, sink in follows) - before)
    assert sum(looked) == len(follows)
    assert looked[:6] == [5, 5, 5, 5, 5, 5], looked


def test_heartbeats_at_a_short_interval_look_at_every_stream_each_tick() -> None:
    world = World()
    sub, sink = world.follow("a")
    world.fanout.tick(sub.last_write + 0.5, heartbeat_s=1)
    assert sink.heartbeats == 0
    world.fanout.tick(sub.last_write + 1.0, heartbeat_s=1)
    assert sink.heartbeats == 1


def test_heartbeats_bear_time_going_back() -> None:
    """A tick earlier than the last looks at nothing and owes nothing: the
    next looks at what its own time since stands for."""
    world = World()
    follows = [world.follow(f"c{i}") for i in range(HEARTBEAT_BUCKETS)]
    start = max(sub.last_write for sub, _ in follows)
    world.fanout.tick(start, heartbeat_s=15)
    world.fanout.tick(start + 0.5, heartbeat_s=15)
    world.fanout.tick(start + 0.25, heartbeat_s=15)  # the clock went back
    for sub, _ in follows:
        sub.last_write = start - 100  # all idle from here
    world.fanout.tick(start + 0.75, heartbeat_s=15)
    # 0.5 s of a 3 s turn of 30 buckets, one stream each: 5.
    assert sum(sink.heartbeats for _, sink in follows) == 5


def test_a_paused_stream_gets_no_heartbeat() -> None:
    world = World()
    ready, ready_sink = world.follow("a")
    paused, paused_sink = world.follow("b")
    paused.pause()  # its connection is full: a heartbeat would only queue behind
    world.fanout.tick(max(ready.last_write, paused.last_write) + 3, heartbeat_s=2)
    assert ready_sink.heartbeats == 1 and paused_sink.heartbeats == 0
    assert paused.ended is None  # within the send timeout


class DirectSink(Recorder):
    """A sink whose events the fan-out writes to a transport itself."""

    def __init__(self) -> None:
        super().__init__()
        self.direct = self.transport = Transport()


class Transport:
    def __init__(self) -> None:
        self.data = b""
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.data += data


def test_events_go_to_a_sinks_direct_transport_while_it_is_not_closing() -> None:
    world = World()
    sub = world.fanout.subscribe("address:a", 10)
    world.fanout.retarget(sub, frozenset({"trades:BTC_USD"}))
    sink = DirectSink()
    world.fanout.attach(sub, sink, b"opening\n")
    world.publish(event(1))
    assert sink.data == b"opening\n"  # the opening goes through write; events do not
    assert sink.transport.data == line_form(event(1))
    sink.transport.closing = True
    world.publish(event(2))
    assert sink.transport.data == line_form(event(1))
    world.fanout.tick(sub.last_write + 16, heartbeat_s=15)
    assert sink.heartbeats == 1  # heartbeats, acks and catch-ups are the sink's own


def test_catching_up_before_new_channels_moves_the_position() -> None:
    world = World()
    sub, sink = world.follow("trades:BTC_USD")
    sub.pause()
    world.publish(event(1))
    world.publish(event(2, "other"))
    assert world.fanout.catch_up(sub)
    world.fanout.retarget(sub, frozenset({"trades:BTC_USD", "other"}))
    assert sink.seqs() == [1]
    sub.resume()
    assert sink.seqs() == [1]  # event 2 lies before the new position: its snapshot came with the subscribe


def test_a_lost_stream_frees_its_place() -> None:
    world = World()
    sub, sink = world.follow("a")
    sub.lost()
    assert world.streams.open == 0 and sink.ended is None  # nothing to say to a client that left
    world.publish(event(1, "a"))
    assert sink.data == b""


def test_retarget_moves_a_subscription_between_channels() -> None:
    world = World()
    sub, sink = world.follow("a", "b")
    assert world.fanout.subscribers("a") == 1 and world.fanout.subscribers("b") == 1
    world.fanout.retarget(sub, frozenset({"b", "c"}))
    assert world.fanout.subscribers("a") == 0 and world.fanout.subscribers("c") == 1
    world.publish(event(1, "a"))
    world.publish(event(2, "c"))
    assert sink.seqs() == [2]


def test_replay_since_conflates_snapshots_and_keeps_every_trade() -> None:
    replay = RecentEvents(capacity=100, max_age_ms=10_000)
    for seq, (channel, snap) in enumerate(
        [("book", True), ("trades:BTC_USD", False), ("book", True), ("trades:BTC_USD", False), ("other", False)],
        start=1,
    ):
        replay.append(event(seq, channel, snap))
    missed = replay.since(1, frozenset({"book", "trades:BTC_USD"}))
    assert missed is not None
    assert [e.seq for e in missed] == [2, 3, 4]


def test_replay_knows_when_it_cannot() -> None:
    replay = RecentEvents(capacity=3, max_age_ms=10_000)
    for seq in range(1, 6):
        replay.append(event(seq))
    assert replay.since(1, frozenset({"trades:BTC_USD"})) is None
    assert [e.seq for e in replay.since(2, frozenset({"trades:BTC_USD"})) or []] == [3, 4, 5]
    aged = RecentEvents(capacity=100, max_age_ms=1000)
    aged.append(event(1, ts=0))
    aged.append(event(2, ts=5000))
    assert aged.since(0, frozenset({"trades:BTC_USD"})) is None


def test_cursor_refuses_non_ascii_digits() -> None:
    assert Cursor.parse("ab12-²") is None
    assert Cursor.parse("ab12-٣") is None
