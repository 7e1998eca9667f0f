"""Progress in a log file is a line per few packs, not tqdm's carriage returns."""

from sweeps.runner import LineProgress, progress_bar


def test_not_a_terminal_gets_about_twenty_lines_and_the_last_pack(capsys):
    lines: list[str] = []
    bar = progress_bar(total=120, packs=30, name="demo", show=True, log=lines.append)
    assert isinstance(bar, LineProgress)  # pytest's stderr is not a terminal
    for _ in range(30):
        bar.update(4)
    bar.close()
    assert len(lines) == 15  # every 2nd pack of 30 (round(30 / 20) = 2)
    assert lines[-1].startswith("demo: 120/120 variants (30/30 packs) in ")
    assert "\r" not in capsys.readouterr().err


def test_quiet_shows_nothing():
    lines: list[str] = []
    bar = progress_bar(total=4, packs=1, name="demo", show=False, log=lines.append)
    bar.update(4)
    bar.close()
    assert lines == []
