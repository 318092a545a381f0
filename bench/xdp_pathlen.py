#!/usr/bin/env python3
"""Counts the BPF instructions `gateway_xdp` executes for one packet, per path.

Load-independent evidence for data-plane changes (this machine's timings move by more than the
changes do): it interprets the object's `xdp` section as the compiler emitted it (before the
verifier inlines array lookups and `bpf_jiffies64`, and without the helpers' own work), with
the maps stubbed in the warm state of a flood: the source known and classified, the current
generation, the clock cache filled, no flush due (as maps in older objects, as global data
in newer ones). Prints, for a known passing source, an exact deny hit and a CIDR deny hit
(IPv4 TCP ACK), the verdict, the instruction count and the helper calls. Standard library
only.

    bench/xdp_pathlen.py target/ebpf/bpfel-unknown-none/release/gateway [other objects...]

Handles the instructions BPF v1-v3 code uses (no atomics, no sign-extending loads).
"""
import struct, sys

def elf(path):
    b = open(path, 'rb').read()
    shoff, = struct.unpack_from('<Q', b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', b, 0x3a)
    secs = []
    for i in range(shnum):
        name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from('<IIQQQQIIQQ', b, shoff + i * shentsize)
        secs.append(dict(name=name, type=typ, off=off, size=size, link=link, info=info))
    strtab = secs[shstrndx]
    def nm(o, s): 
        e = b.index(b'\0', s['off'] + o); return b[s['off'] + o:e].decode()
    for s in secs: s['n'] = nm(s['name'], strtab); s['data'] = b[s['off']:s['off'] + s['size']] if s['type'] != 8 else bytes(s['size'])
    symtab = next(s for s in secs if s['type'] == 2)
    syms = []
    for i in range(symtab['size'] // 24):
        name, info, other, shndx, value, size = struct.unpack_from('<IBBHQQ', symtab['data'], i * 24)
        syms.append(dict(n=nm(name, secs[symtab['link']]), shndx=shndx, value=value, size=size, type=info & 0xf))
    rels = {}
    for s in secs:
        if s['type'] == 9:
            tgt = s['info']
            for i in range(s['size'] // 16):
                off, info = struct.unpack_from('<QQ', s['data'], i * 16)
                rels[(tgt, off)] = syms[info >> 32]
    return secs, syms, rels

M64 = (1 << 64) - 1
def s64(x): x &= M64; return x - (1 << 64) if x >> 63 else x
def s32(x): x &= 0xffffffff; return x - (1 << 32) if x >> 31 else x

class Mem:
    def __init__(self): self.regions = {}; self.next = 1
    def alloc(self, data, name):
        base = self.next << 40; self.next += 1
        self.regions[base] = (bytearray(data), name); return base
    def find(self, addr):
        base = addr & ~((1 << 40) - 1)
        buf, name = self.regions[base]
        return buf, addr - base
    def load(self, addr, n):
        buf, o = self.find(addr); return int.from_bytes(buf[o:o + n], 'little')
    def store(self, addr, n, v):
        buf, o = self.find(addr); buf[o:o + n] = (v & ((1 << (8 * n)) - 1)).to_bytes(n, 'little')

def run(path, packet, scenario):
    secs, syms, rels = elf(path)
    xi = next(i for i, s in enumerate(secs) if s['n'] == 'xdp')
    mem = Mem()
    J, T, GEN = 1000, 5_000_000_000, 77
    mapval = {}
    def u64s(*v): return b''.join(struct.pack('<Q', x) for x in v)
    mapval['TOTALS'] = mem.alloc(bytes(8 * 16), 'TOTALS')
    mapval['GENERATION'] = mem.alloc(u64s(GEN), 'GENERATION')
    mapval['CLOCK'] = mem.alloc(u64s(J, T), 'CLOCK')
    cfg = bytearray(40 + 8 * 1024); mapval['CONFIG'] = mem.alloc(cfg, 'CONFIG')
    cls = {'pass': 0, 'deny': 3, 'cidr': 4}[scenario]
    # SourceStats: 11 u64, cached_class u32, pending u32, cached_gen, cached_until
    st = u64s(10, 1000, 0, 5, 0, 0, T - 10**9, T, 0, 0, 0) + struct.pack('<II', cls, 0) + u64s(GEN, 0)
    mapval['SOURCES'] = mem.alloc(st, 'SOURCES')
    mapval['DENY'] = mem.alloc(bytes(24 + 8 + 64), 'DENY')
    mapval['DENY_CIDR'] = mem.alloc(bytes(24 + 8 + 64), 'DENY_CIDR')
    mapids = {}
    for m in ['TOTALS', 'GENERATION', 'CLOCK', 'CONFIG', 'SOURCES', 'DENY', 'DENY_CIDR', 'ALLOW_CIDR', 'SYN_BUCKETS', 'EVENTS', 'LOG_LIMITS', 'AYA_LOGS']:
        mapids[m] = mem.alloc(bytes(8), 'mapdef:' + m)
    # Globals in data sections (newer objects): the same warm state as the maps above.
    warm = {'GENERATION': GEN, 'CLOCK_JIFFIES': J, 'CLOCK_NOW_NS': T}
    secbase = {}
    def secaddr(idx):
        if idx not in secbase:
            data = bytearray(secs[idx]['data'])
            for sym in syms:
                for key, val in warm.items():
                    if sym['shndx'] == idx and key in sym['n'] and sym['size'] == 8:
                        data[sym['value']:sym['value'] + 8] = struct.pack('<Q', val)
            secbase[idx] = mem.alloc(bytes(data), secs[idx]['n'])
        return secbase[idx]
    pkt = mem.alloc(bytes(256) + packet, 'packet')
    ctx = mem.alloc(struct.pack('<II', 0, 0) + bytes(24), 'ctx')  # xdp_md: data, data_end as u32 (verifier-rewritten in kernel)
    # The object reads ctx->data/data_end as u32 (xdp_md); we hand out full addresses via a hook.
    stack = mem.alloc(bytes(512 * 9), 'stack')
    regs = [0] * 11
    regs[1] = ctx
    regs[10] = stack + 512 * 9
    callstack = []
    sec, pc = xi, 0
    count = 0; helpers = []
    code = secs[sec]['data']
    while True:
        op, rg, off, imm = struct.unpack_from('<BBhi', code, pc * 8)
        dst, src = rg & 0xf, rg >> 4
        count += 1
        cl = op & 7
        if op == 0x18:
            _, _, _, imm2 = struct.unpack_from('<BBhi', code, pc * 8 + 8)
            v = (imm & 0xffffffff) | (imm2 << 32)
            r = rels.get((sec, pc * 8))
            if r is not None:
                if r['type'] == 3:  # section symbol
                    v = secaddr(r['shndx']) + (imm & 0xffffffff)
                elif secs[r['shndx']]['n'] == 'maps':
                    v = mapids[r['n']]
                else:
                    v = secaddr(r['shndx']) + r['value'] + (imm & 0xffffffff)
            regs[dst] = v & M64; pc += 2; continue
        if cl in (4, 7):
            a = regs[dst]; b = regs[src] if op & 8 else (imm & M64 if cl == 7 else imm & 0xffffffff)
            if cl == 7 and not (op & 8): b = s64(imm) & M64
            o = op & 0xf0
            W = M64 if cl == 7 else 0xffffffff
            a &= W; b &= W
            sgn = s64 if cl == 7 else s32
            if o == 0x00: r = a + b
            elif o == 0x10: r = a - b
            elif o == 0x20: r = a * b
            elif o == 0x30: r = a // b if b else 0
            elif o == 0x40: r = a | b
            elif o == 0x50: r = a & b
            elif o == 0x60: r = a << (b & (63 if cl == 7 else 31))
            elif o == 0x70: r = a >> (b & (63 if cl == 7 else 31))
            elif o == 0x80: r = -a
            elif o == 0x90: r = a % b if b else a
            elif o == 0xa0: r = a ^ b
            elif o == 0xb0: r = b
            elif o == 0xc0: r = sgn(a) >> (b & (63 if cl == 7 else 31))
            elif o == 0xd0:  # endian
                n = imm // 8
                if op & 8: r = int.from_bytes(a.to_bytes(8, 'little')[:n], 'big')
                else: r = a & ((1 << imm) - 1)
            else: raise Exception(hex(op))
            regs[dst] = r & W; pc += 1; continue
        if cl == 1:  # LDX
            n = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[op & 0x18]
            addr = (regs[src] + off) & M64
            if addr >= ctx and addr < ctx + 32 and mem.find(addr)[1] < 8:
                # xdp_md.data / data_end
                v = pkt + 256 if mem.find(addr)[1] == 0 else pkt + 256 + len(packet)
            else:
                v = mem.load(addr, n)
            regs[dst] = v; pc += 1; continue
        if cl in (2, 3):
            n = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[op & 0x18]
            if op & 0xe0 == 0xc0: raise Exception('atomic')
            v = regs[src] if cl == 3 else imm
            mem.store((regs[dst] + off) & M64, n, v); pc += 1; continue
        if cl in (5, 6):
            o = op & 0xf0
            if o == 0x00: pc += 1 + off; continue
            if o == 0x80:  # call
                if src == 1:
                    r = rels.get((sec, pc * 8))
                    callstack.append((sec, pc + 1, regs[6:10], regs[10]))
                    if r is not None:
                        sec = r['shndx']; code = secs[sec]['data']
                        pc = (r['value'] if r['type'] != 3 else 0) // 8 + imm + 1 if r['type'] == 3 else r['value'] // 8
                    else:
                        pc = pc + imm + 1
                    regs[10] -= 512
                    continue
                helpers.append(imm)
                if imm == 1:  # map_lookup_elem
                    name = next(k for k, v in mapids.items() if v == regs[1])
                    if name in ('DENY',) and scenario != 'deny': r0 = 0
                    elif name in ('DENY_CIDR',) and scenario != 'cidr': r0 = 0
                    elif name in ('ALLOW_CIDR', 'SYN_BUCKETS'): r0 = 0
                    else: r0 = mapval.get(name, 0)
                    regs[0] = r0
                elif imm == 118: regs[0] = J
                elif imm == 160: regs[0] = T
                else: regs[0] = 0
                pc += 1; continue
            if o == 0x90:  # exit
                if not callstack: return count, regs[0], helpers
                sec, pc, saved, fp = callstack.pop(); code = secs[sec]['data']
                regs[6:10] = saved; regs[10] = fp; continue
            a = regs[dst]; b = regs[src] if op & 8 else (s64(imm) & M64)
            if cl == 6: a &= 0xffffffff; b &= 0xffffffff; sg = s32
            else: sg = s64
            t = {0x10: a == b, 0x20: a > b, 0x30: a >= b, 0x40: a & b != 0, 0x50: a != b,
                 0x60: sg(a) > sg(b), 0x70: sg(a) >= sg(b), 0xa0: a < b, 0xb0: a <= b,
                 0xc0: sg(a) < sg(b), 0xd0: sg(a) <= sg(b)}[o]
            pc += 1 + (off if t else 0); continue
        raise Exception('op %x' % op)

def tcp4(src):
    eth = bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + struct.pack('>H', 0x800)
    tcp = struct.pack('>HHIIBBHHH', 40000, 80, 0, 0, 5 << 4, 0x10, 65535, 0, 0)
    ip = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 40, 0, 0x4000, 64, 6, 0, bytes(src), bytes([10, 99, 0, 1]))
    return eth + ip + tcp

if __name__ == '__main__':
    names = {1: 'map_lookup_elem', 118: 'jiffies64', 160: 'ktime_get_coarse_ns'}
    for path in sys.argv[1:]:
        for sc, src in [('pass', [10, 9, 9, 9]), ('deny', [10, 1, 1, 1]), ('cidr', [10, 2, 3, 4])]:
            n, ret, h = run(path, tcp4(src), sc)
            print(f"{path:40} {sc:5} verdict {ret} insns {n:4} helper calls {[names.get(x, x) for x in h]}")
