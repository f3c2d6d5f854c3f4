"""Video input/output: probe a file, stream upright RGB frames out of it, encode frames back.

The writer keeps timing, aspect, colour tags and the source's audio/subtitle packets, and only
publishes the output file once it is complete.
"""

from vsrq.io.encoders import available_video_encoders
from vsrq.io.probe import VideoInfo, probe
from vsrq.io.reader import Frame, VideoReader
from vsrq.io.writer import VideoWriter

__all__ = ["Frame", "VideoInfo", "VideoReader", "VideoWriter", "available_video_encoders", "probe"]
