"""The C++ simulation server `hw.rtlsim` compiles with a Verilator model: its source, generated per port table.

The server reads the protocol described in `hw.rtlsim` on stdin and answers on stdout; multi-cycle commands
(ticks, waiting for a port, streams, driving inputs row by row) loop in C++, so Python pays one round trip per
command, not per cycle. Ports are reached through a table of pointers to the model's members, named as
Verilator names them (`cxx_name`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hw.rtlsim import Port

_FALLING = re.compile(r"\bnegedge\b|\\CLK_POLARITY (?:1'0|0)\b")


def cxx_name(name: str) -> str:
    """Return the C++ member Verilator gives a top-level port: its `AstNode::encodeName`, under which a
    double underscore becomes ``___05F`` (``out__0`` -> ``out___05F0``) and other symbols ``__0`` + hex."""
    out, i = [], 0
    while i < len(name):
        char = name[i]
        if char.isascii() and (char.isalpha() or (i > 0 and char.isdigit())):
            out.append(char)
        elif char == "_" and name[i + 1:i + 2] == "_":
            out.append("___05F")
            i += 1
        elif char == "_":
            out.append("_")
        else:
            out.append(f"__0{ord(char):02x}")
        i += 1
    return "".join(out)


_DRIVER_TEMPLATE = r"""// Simulation server for the Verilator model Vtop, from hw/rtlsim_server.py; protocol: hw.rtlsim
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "Vtop.h"
#include "verilated.h"
#if __has_include("Vtop___024root.h")
#include "Vtop___024root.h"
#endif

struct Port { void* ptr; int size; int width; bool is_signed; };

static Vtop* top;
static Port* ports;
static uint64_t cycles = 0;
static bool dirty = true;
static char* cur;
static std::vector<uint64_t> block;

static uint64_t mask(int width) { return width >= 64 ? ~0ULL : (1ULL << width) - 1; }
static uint64_t num() { return strtoull(cur, &cur, 10); }
static Port& port() { return ports[num()]; }

static uint64_t get(const Port& p) {
    if (dirty) { top->eval(); dirty = false; }
    uint64_t v;
    switch (p.size) {
        case 1: v = *static_cast<uint8_t*>(p.ptr); break;
        case 2: v = *static_cast<uint16_t*>(p.ptr); break;
        case 4: v = *static_cast<uint32_t*>(p.ptr); break;
        default: v = *static_cast<uint64_t*>(p.ptr);
    }
    if (p.is_signed && p.width < 64 && ((v >> (p.width - 1)) & 1)) v |= ~mask(p.width);
    return v;
}

static void set(const Port& p, uint64_t v) {
    v &= mask(p.width);
    switch (p.size) {
        case 1: *static_cast<uint8_t*>(p.ptr) = static_cast<uint8_t>(v); break;
        case 2: *static_cast<uint16_t*>(p.ptr) = static_cast<uint16_t>(v); break;
        case 4: *static_cast<uint32_t*>(p.ptr) = static_cast<uint32_t>(v); break;
        default: *static_cast<uint64_t*>(p.ptr) = v;
    }
    dirty = true;
}

// One eval per cycle: clk stays high between cycles, so the model's edge detector remembers it high; marking
// it low makes the next eval take a rising edge without first settling the logic at clk low, which changes
// nothing in a design without falling-edge triggers (ONE_EVAL says so). A model whose root class has no
// such detector, or more than one on clk, gets the falling edge's eval.
template <class Root> static bool arm_rising_edge(Root* root) {
    if constexpr (requires { root->__Vtrigprevexpr___TOP__clk__0 = 0; }
                  && !requires { root->__Vtrigprevexpr___TOP__clk__1; }) {
        root->__Vtrigprevexpr___TOP__clk__0 = 0;
        return true;
    }
    return false;
}

static inline void tick() {
#if HAS_CLK
    if (!(ONE_EVAL && arm_rising_edge(top->rootp))) {
        top->clk = 0;
        top->eval();
    }
    top->clk = 1;
#endif
    top->eval();
    dirty = false;
    ++cycles;
}

static void read_block(size_t n) {
    block.resize(n);
    if (fread(block.data(), 8, n, stdin) != n) { fprintf(stderr, "rtlsim: short block\n"); exit(3); }
}

static void reply(const char* head, uint64_t a, uint64_t b, const std::vector<uint64_t>* words) {
    if (b == ~0ULL) printf("%s %llu\n", head, (unsigned long long)a);
    else printf("%s %llu %llu\n", head, (unsigned long long)a, (unsigned long long)b);
    if (words && !words->empty()) fwrite(words->data(), 8, words->size(), stdout);
    fflush(stdout);
}

static void get_cmd() {
    const Port& p = port();
    if (p.is_signed) printf("= %lld\n", (long long)get(p)); else printf("= %llu\n", (unsigned long long)get(p));
    fflush(stdout);
}

static void run_until() {
    const Port& p = port();
    uint64_t want = num(), limit = num();
    for (uint64_t n = 0;; ++n) {
        if (get(p) == want) return reply("=", n, ~0ULL, nullptr);
        if (n == limit) return reply("!", n, ~0ULL, nullptr);
        tick();
    }
}

static void send() {
    const Port& d = port(); const Port& v = port(); const Port& r = port();
    uint64_t stall_limit = num(), start = cycles, stall = 0;
    size_t n = num(), i = 0;
    read_block(n);
    if (n) { set(d, block[0]); set(v, 1); }
    while (i < n) {
        bool ready = get(r) != 0;
        tick();
        if (ready) { stall = 0; if (++i < n) set(d, block[i]); }
        else if (++stall >= stall_limit) break;
    }
    set(v, 0);
    if (i < n) return reply("!", cycles - start, i, nullptr);
    reply("=", cycles - start, ~0ULL, nullptr);
}

static void receive() {
    const Port& d = port(); const Port& v = port(); const Port& r = port();
    size_t n = num();
    uint64_t limit = num(), start = cycles;
    block.clear();
    set(r, 1);
    while (block.size() < n && cycles - start < limit) {
        bool valid = get(v) != 0;
        uint64_t value = get(d);
        tick();
        if (valid) block.push_back(value);
    }
    set(r, 0);
    if (block.size() < n) return reply("!", cycles - start, block.size(), nullptr);
    reply("=", cycles - start, n, &block);
}

static void drive() {
    std::vector<Port*> in(num()), out;
    for (auto& p : in) p = &port();
    out.resize(num());
    for (auto& p : out) p = &port();
    long long when = strtoll(cur, &cur, 10);
    size_t n = num(), rows = 0;
    read_block(n * in.size());
    std::vector<uint64_t> sampled;
    for (size_t c = 0; c < n; ++c) {
        for (size_t i = 0; i < in.size(); ++i) set(*in[i], block[c * in.size() + i]);
        tick();
        if (when >= 0 && !get(ports[when])) continue;
        for (Port* p : out) sampled.push_back(get(*p));
        ++rows;
    }
    reply("=", rows, ~0ULL, &sampled);
}

int main(int argc, char** argv) {
    VerilatedContext context;
    context.commandArgs(argc, argv);
    top = new Vtop{&context};
    Port table[] = {
@PORTS@
        {nullptr, 0, 0, false}};
    ports = table;
    top->eval();
    dirty = false;
    char* line = nullptr;
    size_t capacity = 0;
    while (getline(&line, &capacity, stdin) > 0) {
        cur = line + 1;
        switch (line[0]) {
            case 's': { const Port& p = port(); set(p, num()); break; }
            case 't': for (uint64_t n = num(); n; --n) tick(); break;
            case 'g': get_cmd(); break;
            case 'c': reply("=", cycles, ~0ULL, nullptr); break;
            case 'u': run_until(); break;
            case 'S': send(); break;
            case 'R': receive(); break;
            case 'd': drive(); break;
            case 'q': top->final(); return 0;
            default: fprintf(stderr, "rtlsim: unknown command %s", line); return 2;
        }
    }
    top->final();
    return 0;
}
"""


def driver_source(ports: Sequence[Port], *, falling_edges: bool = False) -> str:
    """Return the C++ server for a model with `ports` (in this order: the protocol's port indices).

    A cycle costs one `eval` of the model (the rising edge) unless the design has `falling_edges`: then
    two, one at ``clk`` low and one at the rising edge.
    """
    rows = [f"        {{&top->{cxx_name(p.name)}, sizeof(top->{cxx_name(p.name)}), {p.width}, "
            f"{'true' if p.signed else 'false'}}}," for p in ports]
    has_clk = any(p.name == "clk" and p.direction == "input" and p.width == 1 for p in ports)
    defines = f"#define HAS_CLK {int(has_clk)}\n#define ONE_EVAL {int(not falling_edges)}\n"
    return defines + _DRIVER_TEMPLATE.replace("@PORTS@", "\n".join(rows))


def has_falling_edges(netlist: str) -> bool:
    """Return whether RTLIL or Verilog text has a falling-edge trigger (a flip-flop or memory port clocked
    on ``negedge``), or might have one: the server then evaluates the model at ``clk`` low as well."""
    return bool(_FALLING.search(netlist))
