"""Beyond one machine: stylize whole collections on a Ray cluster with Ray Data (the ``ray`` extra,
``pip install "nst-fast[ray]"``).

    from nst_fast import Options
    from nst_fast.distributed import stylize_dataset

    summary = stylize_dataset(paths, "starry_night.jpg", "styled/", Options(size=512), address="auto")
    print("\\n".join(summary.lines()))

- :mod:`.run`: :func:`stylize_dataset` and its :class:`Summary`;
- :mod:`.manifest`: what was done with which settings, in the output directory (resuming, refusing);
- :mod:`.batch`: the Ray Data pipeline and its actors (one :class:`~nst_fast.Stylizer` each);
- :mod:`.attempts`: each image's attempts, recorded by the workers (retries that never write twice);
- :mod:`.cluster`: connecting to Ray, and the resources each actor takes.

Ray is imported only when a run starts: importing this package (and ``nst_fast``) does not import it.
"""

from .manifest import SettingsChanged
from .run import Summary, stylize_dataset

__all__ = ["SettingsChanged", "Summary", "stylize_dataset"]
