"""Key reservations between the two ends of a link: one sans-IO, versioned protocol (protocol.py) that
ETSI 014 keys, /v1 keys, WireGuard epochs, ETSI 004 chunks and SKIP keys share, so that a key leaves a store
only through a reservation both ends recorded."""
from qkdd.reservation.protocol import (MAX_ABANDONED, MAX_EPOCH, MAX_HOLDER_BYTES, MAX_MESSAGE_BYTES, MAX_PACKED_BYTES,
                                       NO_REQUEST, TRANSITIONS, WIRE_VERSION, AnnouncementReceived, Answer,
                                       ChunkReservation, EpochAnnouncement, EpochReservation, Etsi014Reservation,
                                       Event, KeyReservation, LateAnswer, MessageType, Purpose, RefuseReason,
                                       Reservation, ReservationAccepted, ReservationEndpoint, ReservationProtocolError,
                                       ReservationReceived, ReservationRefused, ReservedKey, Segment,
                                       SkipKeyReservation, State, check_announcement, check_reservation,
                                       encode_reserve, pack_payloads)

__all__ = ["MAX_ABANDONED", "MAX_EPOCH", "MAX_HOLDER_BYTES", "MAX_MESSAGE_BYTES", "MAX_PACKED_BYTES", "NO_REQUEST",
           "TRANSITIONS", "WIRE_VERSION", "AnnouncementReceived", "Answer", "ChunkReservation", "EpochAnnouncement",
           "EpochReservation", "Etsi014Reservation", "Event", "KeyReservation", "LateAnswer", "MessageType", "Purpose",
           "RefuseReason", "Reservation", "ReservationAccepted", "ReservationEndpoint", "ReservationProtocolError",
           "ReservationReceived", "ReservationRefused", "ReservedKey", "Segment", "SkipKeyReservation", "State",
           "check_announcement", "check_reservation", "encode_reserve", "pack_payloads"]
