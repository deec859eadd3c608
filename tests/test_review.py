"""The review's rules, one example each. Every delta and state that travels goes through the codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import codec
from crdt.dots import Dot
from crdt.hlc import Timestamp
from crdt.review import MAX_TEXT_LENGTH, ModerationStatus, Review, ReviewGoneError
from tests import crdt_profiles  # noqa: F401  (registers and loads the Hypothesis profile)
from tests.crdt_strategies import through_the_wire

PUBLISHED, PENDING, FLAGGED, REJECTED = (
    ModerationStatus.PUBLISHED,
    ModerationStatus.PENDING,
    ModerationStatus.FLAGGED,
    ModerationStatus.REJECTED,
)


def wire(value: Review) -> Review:
    out: Review = through_the_wire(value)
    return out


class Device:
    def __init__(self, replica: str, review: Review) -> None:
        self.replica = replica
        self.review = wire(review)
        self.wall = 1_000

    def ts(self, wall: int | None = None) -> Timestamp:
        self.wall += 1
        return Timestamp(self.wall if wall is None else wall, 0, self.replica)

    def do(self, delta: Review) -> Review:
        delta = wire(delta)
        self.review.apply(delta)
        return delta

    def rate(self, rating: int, wall: int | None = None) -> Review:
        return self.do(self.review.set_rating(self.replica, rating, self.ts(wall)))

    def write(self, text: str, wall: int | None = None) -> Review:
        return self.do(self.review.set_text(self.replica, text, self.ts(wall)))

    def receive(self, *deltas: Review) -> None:
        for delta in deltas:
            self.review.apply(wire(delta))


def created() -> Review:
    review = Review.new()
    review.apply(review.create("rev-1", "sku-9", "ana"))
    return review


def devices() -> tuple[Device, Device, Device]:
    """Ana's phone and tablet, and the server."""
    start = created()
    return Device("phone", start), Device("tablet", start), Device("server", start)


def test_a_new_review_shows_its_identity_and_is_pending() -> None:
    phone, _, _ = devices()
    phone.rate(4)
    value = phone.review.value()
    assert value is not None
    assert (value.review_id, value.product, value.author) == ("rev-1", "sku-9", "ana")
    assert value.rating == 4
    assert value.status is PENDING


def test_of_two_concurrent_ratings_the_later_by_clock_is_shown_and_the_other_is_a_conflict() -> None:
    phone, tablet, _ = devices()
    a, b = phone.rate(5, wall=2_000), tablet.rate(3, wall=1_000)
    phone.receive(b)
    tablet.receive(a)
    for device in (phone, tablet):
        value = device.review.value()
        assert value is not None
        assert value.rating == 5
        assert value.rating_conflicts == (3,)
    assert phone.review == tablet.review


def test_a_rating_written_after_seeing_a_conflict_resolves_it() -> None:
    phone, tablet, _ = devices()
    a, b = phone.rate(5), tablet.rate(3)
    phone.receive(b)
    tablet.receive(a, phone.rate(4))
    value = tablet.review.value()
    assert value is not None
    assert (value.rating, value.rating_conflicts) == (4, ())


def test_text_is_replaced_whole_never_interleaved() -> None:
    phone, tablet, _ = devices()
    phone.write("Good tea")
    tablet.receive(phone.review)
    a = phone.write("Good tea, fast delivery", wall=3_000)
    b = tablet.write("Bad tea", wall=2_000)
    phone.receive(b)
    tablet.receive(a)
    for device in (phone, tablet):
        value = device.review.value()
        assert value is not None
        assert value.text == "Good tea, fast delivery"
        assert value.text_conflicts == ("Bad tea",)


def test_media_urls_are_an_add_wins_set() -> None:
    phone, tablet, _ = devices()
    tablet.receive(phone.do(phone.review.add_media("phone", "https://img/1")))
    a = phone.do(phone.review.remove_media("phone", "https://img/1"))
    b = tablet.do(tablet.review.add_media("tablet", "https://img/1"))  # re-added concurrently
    c = tablet.do(tablet.review.add_media("tablet", "https://img/2"))
    phone.receive(b, c)
    tablet.receive(a)
    for device in (phone, tablet):
        value = device.review.value()
        assert value is not None
        assert value.media == ("https://img/1", "https://img/2")
    d = phone.do(phone.review.remove_media("phone", "https://img/1"))
    tablet.receive(d)
    value = tablet.review.value()
    assert value is not None and value.media == ("https://img/2",)


def test_a_deleted_review_is_never_shown_again_even_after_concurrent_edits() -> None:
    phone, tablet, server = devices()
    phone.rate(4)
    tablet.receive(phone.review)
    deleted = phone.do(phone.review.delete("phone"))
    late = [
        tablet.rate(1),
        tablet.write("changed my mind"),
        tablet.do(tablet.review.add_media("tablet", "u")),
    ]
    phone.receive(*late)
    tablet.receive(deleted)
    server.receive(*late, deleted)
    for device in (phone, tablet, server):
        assert device.review.deleted
        assert device.review.value() is None
    assert phone.review == tablet.review == server.review


def test_a_device_that_knows_the_review_is_deleted_cannot_edit_it() -> None:
    phone, _, _ = devices()
    phone.do(phone.review.delete("phone"))
    with pytest.raises(ReviewGoneError):
        phone.review.set_rating("phone", 3, phone.ts())
    with pytest.raises(ReviewGoneError):
        phone.review.set_text("phone", "x", phone.ts())
    with pytest.raises(ReviewGoneError):
        phone.review.add_media("phone", "u")
    phone.do(phone.review.erase("phone"))  # erasing a deleted review is allowed


def test_erasure_wipes_the_content_and_keeps_only_the_id_the_flags_and_the_context() -> None:
    phone, _, server = devices()
    phone.rate(4)
    phone.write("Ana's opinion")
    phone.do(phone.review.add_media("phone", "https://img/ana"))
    server.receive(phone.review)
    server.receive(server.do(server.review.moderate(1, PUBLISHED)))
    context = server.review.context
    server.do(server.review.erase("server"))
    review = server.review
    assert review.erased and review.value() is None
    assert review.review_id == "rev-1"
    assert not review.has_content() and review.moderation is None
    assert review.context.includes(context)
    encoded = codec.to_dict(review)
    assert "ana" not in repr(encoded) and "sku-9" not in repr(encoded) and "opinion" not in repr(encoded)


def test_no_offline_device_can_resurrect_erased_content() -> None:
    phone, tablet, server = devices()
    phone.rate(4)
    tablet.receive(phone.review)
    erased = server.do(server.review.erase("server"))
    stale_edit = tablet.write("still here?")  # the tablet is offline
    server.receive(tablet.review)  # it reconnects with its whole state
    server.receive(stale_edit)
    assert server.review.erased and not server.review.has_content()
    tablet.receive(erased)
    phone.receive(server.review)
    assert phone.review == tablet.review == server.review
    assert codec.to_dict(phone.review)["s"]["rt"] == []


def test_a_review_is_pending_until_the_server_publishes_it() -> None:
    phone, _, server = devices()
    phone.rate(5)
    phone.write("Lovely")
    server.receive(phone.review)
    assert server.review.status() is PENDING
    phone.receive(server.do(server.review.moderate(1, PUBLISHED)))
    assert phone.review.status() is PUBLISHED
    value = phone.review.value()
    assert value is not None and value.status is PUBLISHED


def test_moderation_keeps_the_highest_server_sequence_whatever_the_arrival_order() -> None:
    phone, _, server = devices()
    phone.rate(5)
    server.receive(phone.review)
    first = server.do(server.review.moderate(1, PUBLISHED))
    second = server.do(server.review.moderate(2, FLAGGED))
    phone.receive(second, first)
    assert phone.review.status() is FLAGGED
    assert phone.review == server.review


def test_an_authors_edit_after_publication_sets_it_back_to_pending() -> None:
    phone, _, server = devices()
    phone.rate(5)
    server.receive(phone.review)
    phone.receive(server.do(server.review.moderate(1, PUBLISHED)))
    edit = phone.write("Actually, it was cold")
    assert phone.review.status() is PENDING
    server.receive(edit)
    assert server.review.status() is PENDING
    phone.receive(server.do(server.review.moderate(2, PUBLISHED)))
    assert phone.review.status() is PUBLISHED


def test_an_edit_the_server_had_not_seen_when_it_judged_reads_pending() -> None:
    phone, tablet, server = devices()
    phone.rate(5)
    server.receive(phone.review)
    tablet.receive(phone.review)
    edit = tablet.rate(1)  # concurrent with the judgment
    verdict = server.do(server.review.moderate(1, REJECTED))
    phone.receive(edit, verdict)
    assert phone.review.status() is PENDING
    phone.receive(server.review)
    server.receive(edit)
    assert server.review.status() is PENDING


def test_removing_a_picture_after_publication_sets_it_back_to_pending() -> None:
    phone, _, server = devices()
    phone.do(phone.review.add_media("phone", "u"))
    server.receive(phone.review)
    phone.receive(server.do(server.review.moderate(1, PUBLISHED)))
    phone.do(phone.review.remove_media("phone", "u"))
    assert phone.review.status() is PENDING


def test_the_hub_can_tell_a_delta_that_carries_moderation() -> None:
    phone, _, server = devices()
    assert not phone.rate(3).carries_moderation()
    assert server.review.moderate(1, PUBLISHED).carries_moderation()


def test_the_worked_example_of_the_module_docstring_holds() -> None:
    def ts(n: int, replica: str) -> Timestamp:
        return Timestamp(n, 0, replica)

    r = Review.new()
    r.apply(r.create("rev-1", "sku-9", "ana"))
    r.apply(r.set_rating("phone", 4, ts(1, "phone")))
    tablet = r.copy()
    r.apply(r.set_text("phone", "Great", ts(2, "phone")))
    d = tablet.set_rating("tab", 5, ts(3, "tab"))
    assert set(d.context.dots()) == {Dot("phone", 1), Dot("tab", 1)}
    r.apply(d)
    value = r.value()
    assert value is not None and (value.rating, value.text, value.rating_conflicts) == (5, "Great", ())
    server = r.copy()
    r.apply(server.moderate(7, PUBLISHED))
    assert r.status() is PUBLISHED
    r.apply(r.add_media("phone", "https://img/1"))
    assert r.status() is PENDING


@pytest.mark.parametrize("rating", [0, 6, -1, True, 4.0, "5", None])
def test_a_rating_is_an_integer_from_one_to_five(rating: object) -> None:
    phone, _, _ = devices()
    with pytest.raises(ValueError):
        phone.review.set_rating("phone", rating, phone.ts())  # type: ignore[arg-type]


def test_texts_urls_and_moderation_inputs_are_validated() -> None:
    phone, _, _ = devices()
    phone.review.set_text("phone", "", phone.ts())  # an empty text is a text
    phone.review.set_text("phone", "x" * MAX_TEXT_LENGTH, phone.ts())
    with pytest.raises(ValueError):
        phone.review.set_text("phone", "x" * (MAX_TEXT_LENGTH + 1), phone.ts())
    with pytest.raises(ValueError):
        phone.review.set_text("phone", b"bytes", phone.ts())  # type: ignore[arg-type]
    for url in (None, 42, "", "u" * 3_000):
        with pytest.raises(ValueError):
            phone.review.add_media("phone", url)  # type: ignore[arg-type]
    for seq, status in ((0, PUBLISHED), (1, "published"), (True, PUBLISHED)):
        with pytest.raises(ValueError):
            phone.review.moderate(seq, status)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Review.new().create("", "p", "a")
    with pytest.raises(ValueError):
        phone.review.set_rating("phone", 3, Timestamp(5, 0, "tablet"))  # a replica stamps its own writes


def test_two_different_reviews_cannot_be_merged() -> None:
    a, b = Review.new(), Review.new()
    a.apply(a.create("rev-1", "sku-9", "ana"))
    b.apply(b.create("rev-2", "sku-9", "ana"))
    with pytest.raises(ValueError):
        a.merge(b)
    with pytest.raises(ValueError):
        a.create("rev-1", "sku-9", "bob")


def test_merge_is_idempotent_commutative_and_associative_on_examples() -> None:
    phone, tablet, server = devices()
    phone.rate(4)
    tablet.write("hello")
    tablet.do(tablet.review.add_media("tablet", "u"))
    server.receive(phone.review)
    server.do(server.review.moderate(3, PUBLISHED))
    a, b, c = phone.review, tablet.review, server.review
    assert a.merge(a) == a
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    phone.do(phone.review.erase("phone"))
    e = phone.review
    assert e.merge(b).merge(c) == c.merge(b.merge(e)) == e.merge(c).merge(b)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.pop("mod"),
        lambda s: s.update(extra=1),
        lambda s: s.update(rt=[0, 1, 6, 1, 0]),  # rating 6
        lambda s: s.update(rt=[0, 1, 4, 1]),  # four numbers
        lambda s: s.update(tx=[0, 1, 7, 1, 0]),  # text not a string
        lambda s: s.update(m=[0, 1, 5]),  # url not a string
        lambda s: s.update(f=4),
        lambda s: s.update(mod=[1, "approved", []]),
        lambda s: s.update(mod=[0, "published", []]),
        lambda s: s.update(id=["rev-1", "sku-9"]),
        lambda s: s.update(f=2),  # erased, but the content is still there
        lambda s: s.update(r=["x"]),
    ],
)
def test_the_decoder_refuses_malformed_states(change: object) -> None:
    phone, _, _ = devices()
    phone.rate(4)
    payload = codec.to_dict(phone.review)
    change(payload["s"])  # type: ignore[operator]
    with pytest.raises(codec.CodecError):
        codec.from_dict(payload)


@st.composite
def reachable_reviews(draw: st.DrawFn) -> tuple[Review, Review, Review]:
    """Two devices and the server after random edits and exchanges."""
    phone, tablet, server = devices()
    seq = 0
    for _ in range(draw(st.integers(0, 14))):
        device = draw(st.sampled_from([phone, tablet, server]))
        kind = draw(
            st.sampled_from(["rate", "write", "media", "sync", "sync", "delete", "erase", "moderate"])
        )
        if kind == "sync":
            device.receive(draw(st.sampled_from([phone, tablet, server])).review)
        elif kind == "moderate":
            seq += 1
            server.do(server.review.moderate(seq, draw(st.sampled_from(ModerationStatus))))
        elif kind == "erase":
            device.do(device.review.erase(device.replica))
        elif device.review.deleted or device.review.erased:
            continue
        elif kind == "rate":
            device.rate(draw(st.integers(1, 5)), wall=draw(st.integers(1, 4)))
        elif kind == "write":
            device.write(draw(st.sampled_from(["good", "bad"])), wall=draw(st.integers(1, 4)))
        elif kind == "media":
            url = draw(st.sampled_from(["u1", "u2"]))
            if draw(st.booleans()):
                device.do(device.review.add_media(device.replica, url))
            else:
                device.do(device.review.remove_media(device.replica, url))
        else:
            device.do(device.review.delete(device.replica))
    return phone.review, tablet.review, server.review


@given(reachable_reviews())
def test_merge_is_a_join_on_reachable_reviews(reviews: tuple[Review, Review, Review]) -> None:
    a, b, c = reviews
    assert a.merge(a) == a
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b).merge(a) == a.merge(b)  # a ⊑ a ⊔ b
    assert wire(a.merge(b)) == a.merge(b)
