#!/usr/bin/env python3
"""Sets up N anchored calls through the edge over SIP (standard library only), for rtpgen.

It plays both ends: a UAC socket sends INVITE (SDP: A = 127.0.0.1:BASE+4i, PCMU) to the
edge; the edge forwards it to this script's UAS socket (the edge's upstream), which answers
200 with B's SDP (127.0.0.1:BASE+4i+2); the UAC sends ACK. The relay ports are read from
the SDPs the edge rewrote: the INVITE's m= port is where B sends, the 200's is where A
sends. Output: the rtpgen ports file, one line per call:
"<call-id> <A port> <B port> <port A sends to> <port B sends to>".

  edgectl.py setup --edge 127.0.0.1:25060 --uas 127.0.0.1:25090 --calls N --base 20000 --out F
  edgectl.py bye   --edge 127.0.0.1:25060 --uas 127.0.0.1:25090 --ports F
"""
import argparse
import re
import socket
import sys

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n")


def addr(s):
    h, p = s.rsplit(":", 1)
    return (h, int(p))


def recv_until(sock, pred, what):
    while True:
        try:
            data, src = sock.recvfrom(65535)
        except socket.timeout:
            sys.exit("edgectl: no %s from the edge" % what)
        m = data.decode("utf-8", "replace")
        if pred(m):
            return m, src


def hdr(m, name):
    for line in m.split("\r\n\r\n")[0].split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def media_port(m):
    body = m.split("\r\n\r\n", 1)[1]
    return int(re.search(r"m=audio (\d+) ", body).group(1))


def respond(req, code, reason, body=""):
    out = ["SIP/2.0 %d %s" % (code, reason)]
    for line in req.split("\r\n\r\n")[0].split("\r\n")[1:]:
        k = line.split(":", 1)[0].strip().lower()
        if k in ("via", "from", "call-id", "cseq", "record-route"):
            out.append(line)
        elif k == "to":
            out.append(line if ";tag=" in line else line + ";tag=uas")
    out.append("Contact: <sip:uas@%s:%d>" % UAS)
    if body:
        out.append("Content-Type: application/sdp")
    out.append("Content-Length: %d" % len(body))
    return ("\r\n".join(out) + "\r\n\r\n" + body).encode()


def request(method, ruri, cid, cseq, routes, to_tag="", body=""):
    lines = ["%s %s SIP/2.0" % (method, ruri),
             "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK%s%d%s;rport" % (UAC + (method, cseq, cid)),
             "Max-Forwards: 70", "From: <sip:bench@example.org>;tag=uac",
             "To: <sip:relay@example.net>" + (";tag=" + to_tag if to_tag else ""),
             "Call-ID: " + cid, "CSeq: %d %s" % (cseq, method),
             "Contact: <sip:bench@%s:%d>" % UAC]
    if routes:
        lines.append("Route: " + ", ".join(routes))
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def routes_of(m):
    rr = []
    for line in m.split("\r\n\r\n")[0].split("\r\n"):
        if line.lower().startswith("record-route:"):
            rr += [v.strip() for v in line.split(":", 1)[1].split(",")]
    return list(reversed(rr))


def main():
    global UAC, UAS
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["setup", "bye"])
    p.add_argument("--edge", required=True)
    p.add_argument("--uas", required=True)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--base", type=int, default=20000)
    p.add_argument("--out")
    p.add_argument("--ports")
    p.add_argument("--tag", default="bench")
    a = p.parse_args()
    edge = addr(a.edge)
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind(("127.0.0.1", 0))
    uac.settimeout(5)
    UAC = uac.getsockname()
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(addr(a.uas))
    uas.settimeout(5)
    UAS = uas.getsockname()
    if a.cmd == "setup":
        rows = []
        for i in range(a.calls):
            cid = "%s-%d" % (a.tag, i)
            pa, pb = a.base + 4 * i, a.base + 4 * i + 2
            uac.sendto(request("INVITE", "sip:relay@example.net", cid, 1, [], body=SDP % pa), edge)
            inv, src = recv_until(uas, lambda m: m.startswith("INVITE ") and hdr(m, "Call-ID") == cid, "INVITE")
            b_sends_to = media_port(inv)
            uas.sendto(respond(inv, 200, "OK", SDP % pb), src)
            ok, _ = recv_until(uac, lambda m: m.startswith("SIP/2.0 200") and hdr(m, "Call-ID") == cid, "200 OK")
            a_sends_to = media_port(ok)
            target = re.search(r"<([^>]+)>", hdr(ok, "Contact")).group(1)
            uac.sendto(request("ACK", target, cid, 1, routes_of(ok), "uas"), edge)
            recv_until(uas, lambda m: m.startswith("ACK ") and hdr(m, "Call-ID") == cid, "ACK")
            rows.append((cid, pa, pb, a_sends_to, b_sends_to, target, ",".join(routes_of(ok))))
        with open(a.out, "w") as f:
            for r in rows:
                f.write("%s %d %d %d %d\n" % r[:5])
        with open(a.out + ".dialogs", "w") as f:
            for r in rows:
                f.write("%s %s %s\n" % (r[0], r[5], r[6] or "-"))
        print("edgectl: %d calls set up" % len(rows))
    else:
        n = 0
        for line in open(a.ports + ".dialogs"):
            cid, target, routes = line.split()
            routes = [] if routes == "-" else routes.split(",")
            uac.sendto(request("BYE", target, cid, 2, routes, "uas"), edge)
            bye, src = recv_until(uas, lambda m: m.startswith("BYE ") and hdr(m, "Call-ID") == cid, "BYE")
            uas.sendto(respond(bye, 200, "OK"), src)
            recv_until(uac, lambda m: m.startswith("SIP/2.0 200") and hdr(m, "Call-ID") == cid, "200 BYE")
            n += 1
        print("edgectl: %d calls ended" % n)


if __name__ == "__main__":
    main()
