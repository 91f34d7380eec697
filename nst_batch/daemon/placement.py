"""Where admitted work runs when there are several devices (the Ray executor's actors, one per
device, on one machine or many): pure decisions over plain records, no clock, no Ray, no GPU.

It is ``scheduler.admit`` across devices, and with a single device it decides exactly what
``admit`` decides (tested). Each device has its own budget, its own slots and its own running
work; the queue and its order (priority, then arrival) are one for all of them:

- **Queue order across devices.** Batches are formed once, in queue order (``scheduler.batches``),
  and placed in that order: no run starts on any device while an earlier one that could start
  there waits. A batch goes to the least loaded device that can take it now: the fewest pieces of
  work, then the most free memory, then the devices' order, so that idle devices fill first.
- **Per-device budgets.** A batch starts on a device only if it fits what that device has free.
  Batches are formed to fit the smallest budget, so a batch never restricts where it may run
  more than its largest member does.
- **Reservations hold one device.** A batch that fits no device now reserves its memory on one
  device (the one with the most free memory among those whose budget could hold it): as on a
  single device, nothing behind it starts there until it has started, while every other device
  goes on. A stream of small runs can never starve a big one, and the big one keeps one device
  waiting, not all.
- **Alone runs only on an idle device.** A run retried after running out of memory (``alone``)
  starts only on a device with nothing on it, and nothing starts beside it. When no device is
  idle, it closes the least loaded one (nothing new starts there until it has run), which then
  drains; the others go on.
- **Resume prefers the checkpoint's node.** A run whose checkpoint is on a node (``Candidate.node``)
  is placed only on that node's devices while the node is among them; it waits, or reserves, there.
  A node that is gone (none of its devices is offered) means the checkpoint is gone with it: the
  run may go anywhere, and starts again; so may a run none of its node's devices could ever hold.
  While devices are still starting on its node (``starting_on``: a restarted daemon's actors come
  up one by one), the run waits for them instead.
- A batch that no device's budget could ever hold is skipped, not reserved: it would block a
  device for ever. (Dispatch's too_big policy fits every run to the budget before it is offered.)
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from .scheduler import Active, Batch, Candidate, batches


@dataclass(frozen=True)
class Device:
    """One device of the pool as placement sees it: where it is, what it may hold, what runs on it."""

    node: str  # the machine (a Ray node id, or "local")
    name: str  # the device on that node, e.g. "cuda:0"
    budget: int
    max_concurrent: int
    running: tuple[Active, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.node, self.name)


@dataclass(frozen=True)
class Placed:
    """A batch admitted onto one device (stage: admitted, about to become that device's ``Work``)."""

    batch: Batch
    node: str
    device: str


@dataclass
class _Room:
    """A device's room during one placement: what is left of it after what started or reserved."""

    index: int
    device: Device
    free: int
    slots: int
    load: int  # pieces of work on it, running or started now
    closed: bool = False  # an alone run runs or waits here: nothing more starts on it

    @property
    def open(self) -> bool:
        return not self.closed and self.slots > 0 and self.free >= 0

    @property
    def idle(self) -> bool:
        return self.load == 0


def place(
    queued: Sequence[Candidate], devices: Sequence[Device], max_batch: int = 1, starting_on: Collection[str] = ()
) -> list[Placed]:
    """The batches to start now, each with its device, in the order to start them. ``starting_on``:
    the nodes where devices are still starting."""
    if not devices:
        return []
    rooms = [
        _Room(
            i, d, d.budget - sum(a.need_bytes for a in d.running), d.max_concurrent - len(d.running), len(d.running),
            closed=any(a.alone for a in d.running),
        )
        for i, d in enumerate(devices)
    ]
    # A checkpoint on a node that is gone is gone too, and one on a node none of whose devices could
    # ever hold the run is of no use: such a run starts again, anywhere.
    room_on = {}
    for d in devices:
        room_on[d.node] = max(room_on.get(d.node, 0), d.budget)
    queued = [
        run if run.node is None or room_on.get(run.node, 0) >= run.need_bytes else replace(run, node=None)
        for run in queued
        if run.node is None or run.node in room_on or run.node not in starting_on  # else it waits for its node
    ]
    smallest = min(d.budget for d in devices)
    placed: list[Placed] = []
    for batch in batches(queued, max_batch, smallest):
        if not any(room.open for room in rooms):
            break
        node = batch.runs[0].node
        eligible = [
            room for room in rooms if (node is None or room.device.node == node) and batch.need_bytes <= room.device.budget
        ]
        open_rooms = [room for room in eligible if room.open]
        if not open_rooms:
            continue  # its devices are full or closed: it waits for them; others go on
        if batch.alone:
            idle = [room for room in open_rooms if room.idle]
            room = min(idle or open_rooms, key=_least_loaded)
            if idle:
                _start(room, batch, placed)
            room.closed = True  # nothing beside it; or it waits here for the device to drain
            continue
        fits = [room for room in open_rooms if batch.need_bytes <= room.free]
        if fits:
            _start(min(fits, key=_least_loaded), batch, placed)
        else:
            room = min(open_rooms, key=lambda r: (-r.free, r.index))
            room.free -= batch.need_bytes  # reserved: when enough of this device is free, it starts here first
    return placed


def _least_loaded(room: _Room) -> tuple[int, int, int]:
    return (room.load, -room.free, room.index)


def _start(room: _Room, batch: Batch, placed: list[Placed]) -> None:
    room.free -= batch.need_bytes
    room.slots -= 1
    room.load += 1
    placed.append(Placed(batch, room.device.node, room.device.name))
