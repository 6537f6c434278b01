"""Class tables of the label regimes (cl_jax/data/label_regimes.py): CIFAR-10/100 class names, CIFAR-100's 20
superclasses, the embedded shapes' coarse grouping, and the standard asymmetric-noise flip maps."""
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The standard CIFAR-10 asymmetric flips (Patrini et al. 2017, Sec. 5; used by Co-teaching+, DivideMix and TCL).
ASYMMETRIC_CIFAR10 = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
# The embedded shapes' flips between similar shapes, five of ten classes as for CIFAR-10.
ASYMMETRIC_SHAPES = {"circle": "ring", "ring": "circle", "triangle": "arrow", "square": "L-shape", "star": "cross"}
# The embedded shapes' grouping (cl_jax/data/shape_geometry.py): curved outlines, pointed polygons, and the rest
# (shapes built of bars).
SHAPES_COARSE = {"round": ("circle", "ring", "heart", "crescent"), "angular": ("triangle", "square", "star"),
                 "other": ("cross", "arrow", "L-shape")}
# CIFAR-100's 20 superclasses (Krizhevsky 2009, Appendix D; tfds cifar100 `coarse_label` names) -> fine classes.
CIFAR100_COARSE = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor")}
CIFAR100_CLASSES = tuple(sorted(f for fine in CIFAR100_COARSE.values() for f in fine))   # tfds / the official order
