"""The synthetic pedestrians: :mod:`.render` draws them, :mod:`.trap` adds the saliency trap; the dataset that
writes them in the Market-1501 layout is :mod:`esreid.data.datasets.synthetic`."""
