"""Features from a pretrained network + a linear classifier (the "very little data" recipe).

Takes the LeNet trained on digits 0-4 (shipped in the zoo), extracts the output of each of
its stages for 10 labelled images per class of digits 5-9, and trains a multinomial logistic
regression on each (L2 strength by 5-fold cross-validation). Runs in about a minute.

    python examples/transfer_features.py
"""
from cnnlab.data import load_dataset
from cnnlab.transfer import extract_many, fit_cv
from cnnlab.transfer.datasets import per_class_sample
from cnnlab.zoo import load

model, info = load("lenet-mnist-5k-digits0-4")
print(info.describe())
train = per_class_sample(load_dataset("mnist-5k-digits5-9", "train"), 10, seed=0)
test = load_dataset("mnist-5k-digits5-9", "test")

layers = ["pool1", "pool2", "relu3", "relu4"]          # conv1, conv2, fc1, fc2 outputs
f_train = extract_many(model, info.normalize(train.images), layers)
f_test = extract_many(model, info.normalize(test.images), layers)
for layer in layers:
    res = fit_cv(f_train[layer], train.labels, k=5)
    acc = res.model.score(f_test[layer], test.labels)
    print(f"{layer:>6} ({f_train[layer].shape[1]:>4} features): L2 {res.best_reg:g} by CV, "
          f"test accuracy {100 * acc:.1f}% on {len(test)} digits 5-9")
