from oad.models.trn import TRN
