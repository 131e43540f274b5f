"""Triple modular redundancy: three copies of a block and a bitwise majority vote on each of its outputs.

`TripleModular` keeps each copy a separate submodule named `rep0`, `rep1`, `rep2`, so that synthesis can be
told to keep them apart (`setattr -mod -set keep_hierarchy 1 top.rep*`, DESIGN §6); otherwise Yosys merges
the identical logic and reports a fraction of TMR's real cost. The voter is a swappable part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from amaranth.hdl import Cat, Module, Shape, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


def _shape(shape: object) -> Shape:
    try:
        cast = Shape.cast(shape)
    except TypeError:
        raise TypeError(f"Voter shape must be a shape-castable object, not {shape!r}") from None
    if cast.width < 1:
        raise ValueError(f"Voter shape must be at least 1 bit wide, not {shape!r}")
    return cast


class MajorityVoter(wiring.Component):
    """Vote three values bitwise; combinational.

    Each bit of `out` is the value at least two of the three inputs agree on; `mismatch` is 1 when the
    inputs are not all equal (a replica disagrees, whether or not the vote masks it).

    Parameters
    ----------
    shape : shape-castable
        Shape of the voted values (the voter works on their bits).

    Members
    -------
    inputs : In(shape).array(3)
    out : Out(shape)
    mismatch : Out(1)
    """

    def __init__(self, shape: object) -> None:
        self._shape = _shape(shape)
        super().__init__({
            "inputs": In(self._shape).array(3),
            "out": Out(self._shape),
            "mismatch": Out(1),
        })

    @property
    def shape(self) -> Shape:
        return self._shape

    def elaborate(self, platform: object) -> Module:
        m = Module()
        a, b, c = (Value.cast(value) for value in self.inputs)
        m.d.comb += self.out.eq((a & b) | (a & c) | (b & c))
        m.d.comb += self.mismatch.eq((a != b) | (a != c))
        return m


class Voter(Protocol):
    """What `TripleModular` needs of a voter: three inputs, the voted output and a disagreement flag."""

    inputs: list[Value]
    out: Value
    mismatch: Value


VoterFactory = Callable[[Shape], Voter]


class TripleModular(wiring.Component):
    """Run three replicas of a component side by side and vote every output port bitwise.

    Every input port of the replica's signature is fanned out to the three replicas (submodules `rep0`,
    `rep1`, `rep2`), but the members named in `single`, which only `rep0` receives (the others' stay at
    their reset value: a fault injector's port, so that a fault hits one replica as in the field); every
    output port (each element of an array member, each port of a nested interface)
    is driven by a voter (submodule `vote_<path>`). The voted outputs are not fed back: a replica whose
    state a fault corrupted stays wrong, and is outvoted, until its own logic overwrites the state.

    Parameters
    ----------
    factory : callable
        Called three times with no arguments; each call returns a `wiring.Component`, all with the same
        signature, which must not have a `mismatch` member.
    voter : callable
        Called with a port's shape, returns the voter for that port (`MajorityVoter` by default).
    single : iterable of str
        Input members of the replica's signature driven into `rep0` only.

    Members
    -------
    The replica's signature, plus
    mismatch : Out(1), 1 when any voter sees its replicas disagree.

    `replicas[i]` is `rep<i>`, whose registers a testbench may read or force.
    """

    def __init__(self, factory: Callable[[], wiring.Component], *, voter: VoterFactory | None = None,
                 single: Iterable[str] = ()) -> None:
        if not callable(factory):
            raise TypeError(f"TMR factory must be callable, not {factory!r}")
        if voter is not None and not callable(voter):
            raise TypeError(f"TMR voter must be callable as voter(shape), not {voter!r}")
        self._voter: VoterFactory = voter if voter is not None else MajorityVoter
        self.replicas = [factory() for _ in range(3)]
        for replica in self.replicas:
            if not isinstance(replica, wiring.Component):
                raise TypeError(f"TMR factory must return a wiring.Component, not {replica!r}")
        self._replica_signature = self.replicas[0].signature
        for replica in self.replicas[1:]:
            if replica.signature != self._replica_signature:
                raise ValueError(f"TMR replicas must share one signature, not {self._replica_signature!r} "
                                 f"and {replica.signature!r}")
        if "mismatch" in self._replica_signature.members:
            raise ValueError("TMR replica signature must not have a 'mismatch' member, which TMR adds")
        if isinstance(single, str):
            raise TypeError(f"TMR single-replica members must be an iterable of names, not the string {single!r}")
        self._single = frozenset(single)
        members = self._replica_signature.members
        wrong = sorted(name for name in self._single if name not in members or members[name].flow != wiring.In)
        if wrong:
            raise ValueError(f"TMR single-replica members must be inputs of the replica, not {wrong!r}")
        super().__init__({**self._replica_signature.members, "mismatch": Out(1)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for i, replica in enumerate(self.replicas):
            m.submodules[f"rep{i}"] = replica
        ports = zip(self._replica_signature.flatten(self),
                    *(replica.signature.flatten(replica) for replica in self.replicas), strict=True)
        mismatches = []
        for (path, member, port), *copies in ports:
            values = [value for _, _, value in copies]
            if member.flow == wiring.In:
                m.d.comb += [value.eq(port) for value in (values[:1] if path[0] in self._single else values)]
                continue
            voter = self._voter(member.shape)
            m.submodules["vote_" + "__".join(map(str, path))] = voter
            m.d.comb += [voter.inputs[i].eq(value) for i, value in enumerate(values)]
            m.d.comb += port.eq(voter.out)
            mismatches.append(voter.mismatch)
        m.d.comb += self.mismatch.eq(Cat(*mismatches).any())
        return m
