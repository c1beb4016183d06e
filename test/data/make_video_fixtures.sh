#!/bin/sh
# Makes the video test fixtures in test/data/ (used by test/test_video.c).
# Run from the repository root: sh test/data/make_video_fixtures.sh SRC_DIR
#
# SRC_DIR holds the longer source clips and their ffmpeg RGB24 references, made
# from the public CC0 clip described in test/data/README.md, under the names
# read below (city_*_16f.y4m, city_352x288_420paldv_Ib_8f.y4m, *.rgb24).
#
# 1. Byte-exact slices (first frames, via head -c) of those clips and of their
#    reference RGB24. A Y4M slice is the header line plus the first N
#    "FRAME\n"+planes records; an RGB24 slice is the first N*W*H*3 bytes. No
#    pixel is changed.
# 2. RGB24 references for the formats SRC_DIR has no reference for, made from
#    those slices by ffmpeg 7:5.1.9-0+deb12u1 (Debian bookworm; the build that
#    made the source references) with the same flags as the source
#    *_neighbor_accurate.rgb24:  -sws_flags neighbor+accurate_rnd+full_chroma_int+bitexact
#    and a 10-bit clip converted from the 4:4:4 master by ffmpeg.
set -eu
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: sh test/data/make_video_fixtures.sh SRC_DIR  (a folder with the source clips, see test/data/README.md)" >&2
    exit 1
fi
S=$1
O=test/data
FL="-sws_flags neighbor+accurate_rnd+full_chroma_int+bitexact"

# slice SRC DST NFRAMES FRAMEBYTES  (Y4M: header line + N*(6+FRAMEBYTES) bytes)
slice() {
    hdr=$(head -n 1 "$1" | wc -c)
    head -c $((hdr + $3 * (6 + $4))) "$1" > "$2"
}
# 4 frames of the two clips that have a source reference
slice "$S/city_320x240_420jpeg_16f.y4m" $O/city_320x240_420jpeg_4f.y4m 4 115200
head -c $((4 * 320 * 240 * 3)) "$S/city_320x240_420jpeg_16f.ffmpeg_neighbor_accurate.rgb24" > $O/city_320x240_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24
slice "$S/city_333x187_420jpeg_16f.y4m" $O/city_333x187_420jpeg_4f.y4m 4 93667
head -c $((4 * 333 * 187 * 3)) "$S/city_333x187_420jpeg_16f.ffmpeg_neighbor_accurate.rgb24" > $O/city_333x187_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24
# 2 frames of the others
slice "$S/city_320x240_444_16f.y4m" $O/city_320x240_444_2f.y4m 2 230400
head -c $((2 * 320 * 240 * 3)) "$S/city_320x240_444_16f.ffmpeg_accurate.rgb24" > $O/city_320x240_444_2f.ffmpeg_accurate.rgb24
slice "$S/city_320x240_422_16f.y4m" $O/city_320x240_422_2f.y4m 2 153600
slice "$S/city_320x240_mono_16f.y4m" $O/city_320x240_mono_2f.y4m 2 76800
slice "$S/city_320x240_420mpeg2_It_16f.y4m" $O/city_320x240_420mpeg2_It_2f.y4m 2 115200
slice "$S/city_352x288_420paldv_Ib_8f.y4m" $O/city_352x288_420paldv_Ib_2f.y4m 2 152064

# references made here with ffmpeg 5.1.9
for f in city_320x240_422_2f city_320x240_420mpeg2_It_2f city_352x288_420paldv_Ib_2f; do
    ffmpeg -nostdin -v error -y -i $O/$f.y4m $FL -pix_fmt rgb24 -f rawvideo $O/$f.ffmpeg_neighbor_accurate.rgb24
done
ffmpeg -nostdin -v error -y -i $O/city_320x240_444_2f.y4m -vf format=yuv420p10le -strict -1 -f yuv4mpegpipe $O/city_320x240_420p10_2f.y4m
ffmpeg -nostdin -v error -y -i $O/city_320x240_420p10_2f.y4m $FL -pix_fmt rgb24 -f rawvideo $O/city_320x240_420p10_2f.ffmpeg_neighbor_accurate.rgb24
