"""The ES-Net paper's result tables (Shen et al., IEEE TIP 2021, Tables I-X) as data, and which esreid config each
row is (docs/methods.md §1.8, §1.9). ``esreid ablate --table`` runs the rows that have a config and prints the
paper's figure beside each cell.

A :class:`Table` has :class:`Column` s (a dataset, optionally a test protocol, and the metrics the paper prints for
it) and :class:`Row` s (a label as printed, the config file stem under ``configs/<column.folder>/``, or ``None`` for a
number the paper quotes from another work, and the printed values in percent; ``None`` for a dash). Values are as
printed, inconsistencies included (docs/methods.md §7 #11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

Values = Tuple[Optional[float], ...]  # one per metric of a column, as printed (percent); None = "-"


@dataclass(frozen=True)
class Column:
    """``key`` names the column (``--dataset`` selects columns by ``folder``); configs are read from
    ``configs/<folder>/``; ``overrides`` select a test protocol (VehicleID's test sizes); ``metrics`` are the
    result keys the paper prints (``R1``, ``R5``, ``mAP``)."""

    key: str
    title: str
    folder: str
    metrics: Tuple[str, ...]
    overrides: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    label: str
    config: Optional[str]  # file stem under configs/<folder>/, None: quoted from another paper (no esreid run)
    values: Dict[str, Values]  # column key -> printed values, in the column's metric order


@dataclass(frozen=True)
class Table:
    name: str  # Roman numeral, as in the paper
    title: str
    columns: Tuple[Column, ...]
    rows: Tuple[Row, ...]

    def folders(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(c.folder for c in self.columns))


PAPER_METRICS = ("R1", "mAP")  # the columns the papers print per person re-ID dataset
MARKET = Column("market1501", "Market-1501", "market1501", PAPER_METRICS)
DUKE = Column("dukemtmcreid", "DukeMTMC-reID", "dukemtmcreid", PAPER_METRICS)
MSMT = Column("msmt17", "MSMT17", "msmt17", PAPER_METRICS)
PERSON = (MARKET, DUKE, MSMT)
VEHICLEID = tuple(Column(f"vehicleid-{size}", title, "vehicleid", ("R1", "R5"), (f"data.args={{test_size: {size}}}",))
                  for size, title in ((800, "VehicleID Small"), (1600, "VehicleID Medium"), (2400, "VehicleID Large")))
VERI = (Column("veri776", "VeRi-776", "veri776", ("R1", "R5", "mAP")),)


def _person(label: str, config: Optional[str], values: Sequence[Optional[float]],
            columns: Sequence[Column] = PERSON) -> Row:
    """A row of a person table: ``values`` flat in the paper's order (R1, mAP per dataset)."""
    it = iter(values)
    return Row(label, config, {c.key: tuple(next(it) for _ in c.metrics) for c in columns})


def _rows(columns: Sequence[Column], *rows: Tuple[str, Optional[str], Sequence[Optional[float]]]) -> Tuple[Row, ...]:
    return tuple(_person(label, config, values, columns) for label, config, values in rows)


BASE = ("Base", "base", (93.9, 83.2, 85.0, 72.1, 75.1, 47.2))
ESNET = ("ES-Net", "esnet", (95.7, 88.6, 89.2, 78.8, 80.9, 57.3))

TABLES: Dict[str, Table] = {t.name: t for t in (
    Table("I", "comparison with the state of the art", PERSON, _rows(
        PERSON,
        ("SVDNet", None, (82.3, 62.1, 76.7, 56.8, None, None)),
        ("MGN", None, (95.7, 86.9, 88.7, 78.4, None, None)),
        ("PCB", None, (93.8, 81.6, 83.3, 69.2, 68.2, 40.4)),
        ("CAMA", None, (94.7, 84.5, 85.8, 72.9, None, None)),
        ("MHN", None, (95.1, 85.0, 89.1, 77.2, None, None)),
        ("CASN", None, (94.4, 82.8, 87.7, 73.7, None, None)),
        ("AANet", None, (93.9, 83.4, 87.7, 74.3, None, None)),
        ("DGNet", None, (94.8, 86.0, 86.6, 74.8, 77.2, 52.3)),
        ("IANet", None, (94.4, 83.1, 87.1, 73.4, 75.5, 46.8)),
        ("OSNet", None, (94.8, 84.9, 86.6, 73.5, 78.7, 52.9)),
        BASE, ESNET)),
    Table("II", "AIB and ESB", PERSON, _rows(
        PERSON, BASE,
        ("AIB", "aib", (94.4, 85.1, 85.9, 72.6, 75.4, 48.0)),
        ("ESB (R = 10%, P = 0.3)", "esnet_esb_only", (95.2, 87.1, 88.6, 78.0, 79.2, 54.5)),
        ("ESB (R = 20%, P = 0.5)", "esnet_esb_only_r20_p05", (94.6, 86.2, 86.9, 77.0, 76.3, 52.9)),
        ("AIB+ESB (R = 10%, P = 0.3)", "esnet_r10_p03", (95.7, 88.0, 89.1, 78.1, 81.0, 56.8)),
        ("AIB+ESB (R = 20%, P = 0.5)", "esnet", (95.7, 88.6, 89.2, 78.8, 80.9, 57.3)))),
    Table("III", "components of the ESB", PERSON, _rows(
        PERSON, BASE,
        ("Base+BESM", "base_besm", (94.3, 85.1, 85.7, 74.3, 76.4, 49.9)),
        ("Base+BESM+P-pooling", "base_besm_ppool", (94.6, 86.4, 88.2, 76.6, 78.0, 52.4)),
        ("Base+BESM+P-pooling+Triplet (= ESB)", "esnet_esb_only", (95.2, 87.1, 88.6, 78.0, 79.2, 54.5)))),
    Table("IV", "global pooling", PERSON, _rows(
        PERSON,
        ("Base+BESM+GAP", "base_besm", (94.3, 85.1, 85.7, 74.3, 76.4, 49.9)),
        ("Base+BESM+GMP", "base_besm_gmp", (94.2, 84.4, 87.2, 75.3, 75.0, 48.5)),
        ("Base+BESM+P-pooling", "base_besm_ppool", (94.6, 86.4, 88.2, 76.6, 78.0, 52.4)),
        ("ES-Net", "esnet", (95.7, 88.6, 88.5, 78.7, 80.5, 57.3)))),
    Table("V", "other erasing methods", (MARKET, MSMT), _rows(
        (MARKET, MSMT),
        ("Feature Dropping Branch [4]", None, (93.6, 83.3, None, None)),
        ("Base+Random Erasing", "base_random_erasing", (92.5, 82.9, 72.8, 48.1)),
        ("Base+Grad-CAM Erasing", "base_gradcam_erasing", (94.1, 84.7, 74.6, 49.4)),
        ("Base+Feature Dropping Branch", "base_feature_dropping", (93.7, 83.2, 73.1, 47.0)),
        ("Base+BESM", "base_besm", (94.3, 85.1, 75.4, 49.9)),
        ("ES-Net", "esnet", (95.7, 88.6, 80.5, 57.3)))),
    Table("VI", "P-pooling in the AIB", PERSON, _rows(
        PERSON,
        ("ES-Net (origin: GAP in AIB)", "esnet", (95.7, 88.6, 89.2, 78.8, 80.9, 57.3)),
        ("ES-Net (P-pooling in AIB and ESB)", "esnet_ppool_both", (95.8, 88.3, 88.9, 79.3, 81.1, 57.3)))),
    Table("VII", "AGW backbone", PERSON, _rows(
        PERSON,
        ("AGW", "agw", (95.1, 87.8, 89.0, 79.6, 68.3, 49.3)),
        ("ES-Net* (AGW backbone)", "esnet_agw", (95.3, 89.1, 89.7, 80.2, 77.9, 55.6)))),
    Table("VIII", "VehicleID", VEHICLEID, _rows(
        VEHICLEID,
        ("CLVR (Inception-V3)", None, (62.0, 76.0, 56.1, 71.8, 50.6, 68.0)),
        ("C2F (GoogLeNet)", None, (61.1, 81.7, 56.2, 76.2, 51.4, 72.2)),
        ("RAM (*)", None, (75.2, 91.5, 72.3, 87.0, 76.7, 84.5)),
        ("NuFACT (*)", None, (48.9, 69.5, 43.6, 65.3, 38.6, 60.7)),
        ("AAVER (ResNet-50)", None, (72.5, 93.2, 66.9, 89.4, 60.2, 84.9)),
        ("SAN (ResNet-50)", None, (79.7, 94.3, 78.4, 91.3, 75.6, 88.3)),
        ("Part (ResNet-50)", None, (78.4, 92.3, 75.0, 88.3, 74.2, 86.4)),
        ("VAMI (*)", None, (63.1, 83.3, 52.9, 75.1, 47.3, 70.3)),
        ("Base (ResNet-50)", "base", (79.1, 93.3, 76.8, 88.6, 73.4, 85.7)),
        ("ESB (ResNet-50)", "esnet_esb_only", (80.5, 94.7, 77.6, 90.3, 74.4, 87.4)),
        ("ES-Net (ResNet-50)", "esnet", (83.6, 96.9, 79.9, 93.5, 76.9, 90.7)))),
    Table("IX", "VeRi-776", VERI, _rows(
        VERI,
        ("RAM (*)", None, (88.6, 94.0, 61.5)),
        ("NuFACT (*)", None, (81.6, 95.1, 53.4)),
        ("AAVER (ResNet-50)", None, (88.7, 94.1, 58.5)),
        ("SAN (ResNet-50)", None, (93.3, 97.1, 72.5)),
        ("Part (ResNet-50)", None, (94.3, 98.7, 74.3)),
        ("PAMTRI (DenseNet121)", None, (92.9, 97.0, 71.9)),
        ("VAMI (*)", None, (50.1, 90.8, 77.0)),
        ("Base (ResNet-50)", "base", (95.0, 97.6, 74.4)),
        ("ESB (ResNet-50)", "esnet_esb_only", (96.4, 98.2, 79.2)),
        ("ES-Net (ResNet-50)", "esnet", (97.0, 98.5, 81.9)))),
    Table("X", "components of the ESB on VeRi-776", VERI, _rows(
        VERI,
        ("Base", "base", (95.0, 97.6, 74.4)),
        ("Base+BESM", "base_besm", (95.9, 98.3, 76.5)),
        ("Base+BESM+P-pooling", "base_besm_ppool", (96.0, 98.1, 77.0)),
        ("Base+BESM+P-pooling+Triplet (= ESB)", "esnet_esb_only", (96.4, 98.2, 79.2)))),
)}
