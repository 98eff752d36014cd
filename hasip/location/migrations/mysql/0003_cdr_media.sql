-- The media relay's figures for a relayed call (hasip/proxy/media.py), as
-- rtpengine counted them when its session was deleted: the instance,
-- RTP packets, bytes and errors over every stream, the worst packet loss
-- and jitter and the lowest MOS from the RTCP reports (0 where none).
ALTER TABLE cdr
    ADD COLUMN media VARCHAR(128) NOT NULL DEFAULT '',
    ADD COLUMN media_packets BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN media_bytes BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN media_errors BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN media_lost INT NOT NULL DEFAULT 0,
    ADD COLUMN media_jitter INT NOT NULL DEFAULT 0,
    ADD COLUMN media_mos DOUBLE NOT NULL DEFAULT 0;
