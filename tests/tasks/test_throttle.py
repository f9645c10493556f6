from tasks.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_line_then_one_per_interval_and_always_the_final_one():
    clock = Clock()
    throttle = Throttle(interval_s=10.0, clock=clock)
    shown = []
    for second in range(0, 35):
        clock.now = float(second)
        shown.append(throttle.due(final=second == 34))
    assert [second for second, due in enumerate(shown) if due] == [0, 10, 20, 30, 34]


def test_a_final_line_restarts_the_interval():
    clock = Clock()
    throttle = Throttle(interval_s=5.0, clock=clock)
    assert throttle.due()
    clock.now = 1.0
    assert throttle.due(final=True)
    clock.now = 5.5
    assert not throttle.due(), "five seconds after the final line, not after the first"
