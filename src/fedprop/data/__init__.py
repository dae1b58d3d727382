"""Party data: the dataset schema, checked loading, the bank split and feature encoding."""

from fedprop.data.encoding import (
    FeatureEncoder,
    apply_transform,
    count_slots,
    encoded_feature_names,
    local_stats,
    stats_layout,
)
from fedprop.data.loader import TEST_FILE, TRAIN_FILE, PartyData, load_party, read_party_csv
from fedprop.data.schema import SIGNED_LOG1P, TRANSFORMS, Column, ColumnKind, Schema
from fedprop.data.split import (
    BANK_FULL_COLUMNS,
    ID_COLUMN,
    LEAKY_COLUMNS,
    PARTY_GROUPS,
    OutputExistsError,
    SplitSummary,
    split_bank_marketing,
)

__all__ = [
    "BANK_FULL_COLUMNS",
    "ID_COLUMN",
    "LEAKY_COLUMNS",
    "PARTY_GROUPS",
    "SIGNED_LOG1P",
    "TEST_FILE",
    "TRAIN_FILE",
    "TRANSFORMS",
    "Column",
    "ColumnKind",
    "FeatureEncoder",
    "OutputExistsError",
    "PartyData",
    "Schema",
    "SplitSummary",
    "apply_transform",
    "count_slots",
    "encoded_feature_names",
    "load_party",
    "local_stats",
    "read_party_csv",
    "split_bank_marketing",
    "stats_layout",
]
