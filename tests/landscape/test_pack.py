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
