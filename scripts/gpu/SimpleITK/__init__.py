"""Stand-in for SimpleITK on a GPU node that trains stage 1 from a slice cache: importable, unusable."""


class _Missing:
    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"SimpleITK.{self.name}: SimpleITK is not installed on this machine")

    def __getattr__(self, name):
        return _Missing(f"{self.name}.{name}")


def __getattr__(name):
    return _Missing(name)
