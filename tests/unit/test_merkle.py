"""RFC 6962 Merkle tree of the signed checkpoints: known roots, every proof of every small tree."""

from __future__ import annotations

import hashlib

from services.runtime.checkpoints import inclusion_path, merkle_root, verify_inclusion


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_roots_follow_rfc6962_split_at_the_largest_power_of_two():
    a, b, c = b"a", b"b", b"c"
    assert merkle_root([]) == hashlib.sha256(b"").digest()
    assert merkle_root([a]) == hashlib.sha256(b"\x00a").digest()
    # three leaves: k = 2, so ((a b) c), not (a (b c)); the hashes written out with RFC 6962's prefixes (0x00 a
    # leaf, 0x01 a node), not with the module's own leaf_hash/node_hash, which would agree with any prefix
    leaf_a, leaf_b, leaf_c = _sha(b"\x00a"), _sha(b"\x00b"), _sha(b"\x00c")
    assert merkle_root([a, b, c]) == _sha(b"\x01" + _sha(b"\x01" + leaf_a + leaf_b) + leaf_c)


def test_every_proof_of_every_tree_up_to_33_leaves_verifies_and_a_wrong_one_does_not():
    for size in range(1, 34):
        leaves = [f"leaf-{i}".encode() for i in range(size)]
        root = merkle_root(leaves)
        for index in range(size):
            path = inclusion_path(index, leaves)
            assert verify_inclusion(leaves[index], index, size, path, root), (size, index)
            assert not verify_inclusion(b"forged", index, size, path, root)
            if size > 1:
                assert not verify_inclusion(leaves[index], (index + 1) % size, size, path, root)
                assert not verify_inclusion(leaves[index], index, size, path, merkle_root(leaves[:-1]))
