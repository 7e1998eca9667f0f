from landscape.pack import make_packs, pack_key
from landscape.variant import DataSpec, OptimSpec, Variant


def test_per_member_knobs_share_a_pack_and_shapes_do_not():
    base = Variant()
    same = [
        Variant(seed=1),
        Variant(optim=OptimSpec(lr=0.3)),
        Variant(data=DataSpec(label_noise=0.2)),
    ]
    assert all(pack_key(v) == pack_key(base) for v in same)
    assert pack_key(Variant(optim=OptimSpec(batch_size=32))) != pack_key(base)


def test_packs_hold_whole_replicate_groups():
    variants = [
        Variant(optim=OptimSpec(lr=lr), seed=s) for lr in (0.1, 0.2, 0.3) for s in (0, 1, 2)
    ]
    packs = make_packs(variants, max_members=7)
    assert sorted(len(p) for p in packs) == [3, 6]
    for pack in packs:
        groups = {v.group_id for v in pack}
        for g in groups:
            assert sum(v.group_id == g for v in variants) == sum(v.group_id == g for v in pack)
    assert sorted(v.variant_id for p in packs for v in p) == sorted(v.variant_id for v in variants)


def test_group_larger_than_cap_is_split():
    variants = [Variant(seed=s) for s in range(5)]
    assert [len(p) for p in make_packs(variants, max_members=2)] == [2, 2, 1]


def test_member_bytes_counts_parameters_and_activations():
    from landscape.pack import member_bytes
    from landscape.variant import ModelSpec

    v = Variant(model=ModelSpec("mlp", width=8, depth=1), optim=OptimSpec(batch_size=2))
    # params: Linear(4->8) 40 + Linear(8->3) 27 = 67, fp32, 5 copies + 1 momentum buffer
    # activations of a batch of 2: Linear 16 + ReLU 16 + head 6 = 38 floats, 3 times
    assert member_bytes(v, (4,), 3) == 4 * 67 * 6 + 3 * 4 * 38
    wide = Variant(model=ModelSpec("mlp", width=16, depth=1), optim=OptimSpec(batch_size=2))
    assert member_bytes(wide, (4,), 3) > member_bytes(v, (4,), 3)


def test_split_to_fit_keeps_groups_whole():
    from landscape.pack import split_to_fit

    variants = [Variant(optim=OptimSpec(lr=lr), seed=s) for lr in (0.1, 0.2) for s in (0, 1)]
    parts = split_to_fit(variants, 2)
    assert [len(p) for p in parts] == [2, 2]
    assert all(len({v.group_id for v in p}) == 1 for p in parts)
