"""TreeHold forgets the keys of rows its trees let go, but only once the client acknowledged a
position after the one by which it was told (a client resumes from what it acknowledged, and the
keys are what a resume must tell it to drop)."""

from __future__ import annotations

from electricctl._model.rows import Change, Column, RelationDef
from electricctl._model.table import TableRef
from electricctl._shapes.tree import Edge, Moves, Node, TreeHold

PROJECTS = RelationDef(
    1, "public", "projects", (Column("id", 25, "text", True, False), Column("status", 25, "text", False, True))
)
ISSUES = RelationDef(
    2, "public", "issues", (Column("id", 25, "text", True, False), Column("project_id", 25, "text", False, True))
)


def tree() -> Node:
    root = Node(TableRef("public", "projects"), PROJECTS, None, "", None)
    root.add(Node(TableRef("public", "issues"), ISSUES, None, "", Edge("one_to_many", ("project_id",), ("id",))))
    return root


def held_tree() -> tuple[TreeHold, Node]:
    hold = TreeHold()
    root = tree()
    hold.add_tree(root)
    moves = Moves()
    hold.take(root, PROJECTS, (b"p1", b"a"), moves)
    hold.take(root.children[0], ISSUES, (b"i1", b"p1"), moves)
    hold.take(root.children[0], ISSUES, (b"i2", b"p1"), moves)
    return hold, root


def test_keys_let_go_are_forgotten_only_after_a_later_acknowledgement() -> None:
    hold, _ = held_tree()
    assert hold.seen == {"public.issues": {(b"i1",), (b"i2",)}, "public.projects": {(b"p1",)}}
    # i1 moves to a project the tree does not hold: it leaves
    hold.apply(Change("U", ISSUES, (b"i1", b"p9"), (b"i1", b"p1")), Moves())
    assert ("public.issues", (b"i1",)) in hold.loose
    assert hold.prune(10**9) == 0  # not told yet: nothing is forgotten, however far the ack
    hold.stamp(100)  # the change went out at 100
    assert hold.prune(100) == 0  # an ack of 100 itself does not prove the client has it
    assert (b"i1",) in hold.seen["public.issues"]
    assert hold.prune(101) == 100
    assert hold.seen["public.issues"] == {(b"i2",)} and not hold.loose


def test_a_key_taken_again_before_the_ack_is_kept() -> None:
    hold, _ = held_tree()
    hold.apply(Change("U", ISSUES, (b"i1", b"p9"), (b"i1", b"p1")), Moves())
    hold.stamp(100)
    hold.apply(Change("U", ISSUES, (b"i1", b"p1"), (b"i1", b"p9")), Moves())  # back under p1
    assert not hold.loose
    assert hold.prune(200) == 0
    assert (b"i1",) in hold.seen["public.issues"]
    # and let go once more: the newer stamp counts, not the first
    hold.apply(Change("D", ISSUES, None, (b"i1", b"p1")), Moves())
    hold.stamp(300)
    assert hold.prune(250) == 0 and (b"i1",) in hold.seen["public.issues"]
    assert hold.prune(301) == 300 and hold.seen["public.issues"] == {(b"i2",)}


def test_a_row_another_level_holds_is_not_loose() -> None:
    hold, root = held_tree()
    other = tree()
    hold.add_tree(other)
    hold.take(other, PROJECTS, (b"p1", b"a"), Moves())
    hold.take(other.children[0], ISSUES, (b"i1", b"p1"), Moves())
    hold.remove_tree(root)
    assert ("public.issues", (b"i1",)) not in hold.loose  # the second tree holds it
    assert ("public.issues", (b"i2",)) in hold.loose
    hold.stamp(5)
    hold.prune(6)
    assert hold.seen == {"public.issues": {(b"i1",)}, "public.projects": {(b"p1",)}}


def test_a_root_leaving_takes_its_subtree_and_all_of_it_is_forgotten() -> None:
    hold, _ = held_tree()
    moves = Moves()
    hold.apply(Change("U", PROJECTS, (b"p1", b"b"), (b"p1", b"a")), moves)
    # the root still matches (no where): make it leave by deleting it
    hold.apply(Change("D", PROJECTS, None, (b"p1", b"b")), moves)
    assert {tk for tk in hold.loose} == {
        ("public.projects", (b"p1",)),
        ("public.issues", (b"i1",)),
        ("public.issues", (b"i2",)),
    }
    hold.stamp(7)
    assert hold.prune(8) == 7
    assert hold.seen == {}
