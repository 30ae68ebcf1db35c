#!/usr/bin/env python3
"""A WHIP publisher or WHEP viewer on aiortc, a WebRTC stack independent of str0m and
Chromium (its own ICE, DTLS on OpenSSL, SRTP on libsrtp, VP8 on libvpx).

    whip_aiortc.py publish URL SECONDS   sends VP8 video and Opus audio for SECONDS
    whip_aiortc.py watch URL SECONDS     receives for SECONDS, decoding what arrives

Both follow RFC 9725: POST the offer (application/sdp), expect 201 Created with a
Location, DELETE the Location at the end. The last line printed is a JSON report:
{"status", "location", "connected", "video_frames", "audio_frames", "video_size", "deleted"}.

Candidates are restricted to 127.0.0.1 (aioice leaves loopback out by default), so the
test traffic stays on loopback.
"""

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def http(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


async def gathered(pc):
    while pc.iceGatheringState != "complete":
        await asyncio.sleep(0.05)


async def main(mode, url, seconds):
    pc = RTCPeerConnection()
    report = {"mode": mode, "connected": False, "video_frames": 0, "audio_frames": 0, "video_size": None, "deleted": False}
    done = asyncio.get_running_loop().create_future()

    if mode == "publish":
        pc.addTrack(VideoStreamTrack())
        pc.addTrack(AudioStreamTrack())
    else:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track):
            async def consume():
                while not done.done():
                    try:
                        frame = await track.recv()
                    except Exception:
                        return
                    if track.kind == "video":
                        report["video_frames"] += 1
                        report["video_size"] = [frame.width, frame.height]
                    else:
                        report["audio_frames"] += 1

            asyncio.ensure_future(consume())

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected":
            report["connected"] = True

    await pc.setLocalDescription(await pc.createOffer())
    await gathered(pc)
    status, headers, answer = http("POST", url, pc.localDescription.sdp.encode())
    report["status"] = status
    location = headers.get("Location") or headers.get("location")
    report["location"] = location
    if status != 201 or not location:
        report["error"] = answer
        print(json.dumps(report), flush=True)
        await pc.close()
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    print(json.dumps({"mode": mode, "answered": True}), flush=True)
    await asyncio.sleep(seconds)
    done.set_result(True)
    status, _, _ = http("DELETE", urllib.parse.urljoin(url, location))
    report["deleted"] = status == 200
    await pc.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    mode, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sys.exit(asyncio.run(main(mode, url, seconds)))
