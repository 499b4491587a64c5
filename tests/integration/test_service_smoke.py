from sealedkb.kb.knowledge_base import KnowledgeBase


def test_add_get_roundtrip(any_kb: KnowledgeBase) -> None:
    e = any_kb.add("hello world", tags=["A"], metadata={"k": 1})
    got = any_kb.get(e.id)
    assert got.content == "hello world"
    assert got.tags == ("a",)
    assert got.metadata == {"k": 1}
