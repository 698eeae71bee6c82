"""A 2-second test clip with sound for the browser check of anonymised videos (docs/detection.md).

Pans over a WIDER FACE val group photo at 640x360, 25 frames/s, H.264, with a
440 Hz tone as AAC; writes ``clip.mp4`` in the current folder. Then::

    dsfd detect clip.mp4 --anonymize blur --out out
    chromium --headless --no-sandbox --autoplay-policy=no-user-gesture-required \
        --allow-file-access-from-files --virtual-time-budget=5000 --screenshot=shot.png page.html

where ``page.html`` holds ``<video src="out/clip.mp4">`` and prints what the
browser decoded (see docs/detection.md, "Videos people can publish").
"""
import av, numpy as np, cv2, fractions
img = cv2.imread("/work/shared/data/widerface/WIDER_val/images/0--Parade/0_Parade_Parade_0_470.jpg")
H, W = 360, 640
out = av.open("clip.mp4", "w")
v = out.add_stream("libx264", rate=25); v.width, v.height, v.pix_fmt = W, H, "yuv420p"
a = out.add_stream("aac", rate=44100)
for i in range(50):
    x = int(i * (img.shape[1] - W) / 49)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:H, x:x + W]), format="bgr24")
    for p in v.encode(frame): out.mux(p)
t = np.arange(44100 * 2) / 44100
tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
for k in range(0, tone.shape[1], 1024):
    af = av.AudioFrame.from_ndarray(tone[:, k:k + 1024], format="fltp", layout="mono"); af.sample_rate = 44100
    for p in a.encode(af): out.mux(p)
for p in v.encode(): out.mux(p)
for p in a.encode(): out.mux(p)
out.close()
