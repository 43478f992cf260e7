"""Tiny copies of the four datasets' real on-disk layouts, as TorchXRayVision reads them.

For the plugin's tests and for anyone who wants to try ``xrv-*`` datasets without the real data
(``write_sample_data(folder)`` returns one data root per registered name).  The CSV header lines are
verbatim those of the files shipped inside the torchxrayvision 1.5.7 wheel
(``torchxrayvision/data/``), which are the distributed files (PadChest's and RSNA's DICOM-header
file with the leading unnamed index column they have there); the rows are real rows of those
files (a selection), except where a comment says otherwise.  The images are generated: deterministic grey
patterns, 8-bit PNG (NIH), JPEG (CheXpert, RSNA) and 16-bit PNG (PadChest), small and of several
shapes.

Layouts written (the defaults of the datasets' ``imgpath`` / ``csvpath`` options)::

    nih/Data_Entry_2017_v2020.csv  nih/BBox_List_2017.csv  nih/images/<Image Index>
    chexpert/train.csv             chexpert/train/patientNNNNN/studyN/viewN_frontal.jpg
    padchest/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz  padchest/images/<ImageID>
    rsna/stage_2_train_labels.csv  rsna/stage_2_train_images_jpg/<patientId>.jpg
    rsna/kaggle_stage_2_train_images_dicom_headers.csv   (xrv's own file; the included copy works too)
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

__all__ = ["write_sample_data", "NIH_BOX_IMAGES", "IMAGE_SIZES"]

NIH_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")

NIH_ENTRY_ROWS = """\
00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.14300000000000002,0.14300000000000002
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.14300000000000002,0.14300000000000002
00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA,2500,2048,0.168,0.168
00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171
00000003_001.png,Hernia,0,3,74,F,PA,2500,2048,0.168,0.168
00000003_002.png,Hernia,1,3,75,F,PA,2048,2500,0.168,0.168
00000003_003.png,Hernia|Infiltration,2,3,76,F,PA,2698,2991,0.14300000000000002,0.14300000000000002
00000003_000.png,Hernia,7,3,81,F,PA,2582,2991,0.14300000000000002,0.14300000000000002
00000004_000.png,Mass|Nodule,0,4,82,M,AP,2500,2048,0.168,0.168
00000005_000.png,No Finding,0,5,69,F,PA,2048,2500,0.168,0.168
00000006_000.png,No Finding,0,6,81,M,PA,2500,2048,0.168,0.168
00000007_000.png,No Finding,0,7,82,M,PA,2500,2048,0.168,0.168
00000008_000.png,Cardiomegaly,0,8,68,F,PA,2048,2500,0.171,0.171
00000009_000.png,Emphysema,0,9,72,M,PA,2992,2991,0.14300000000000002,0.14300000000000002
00000010_000.png,Infiltration,0,10,84,F,PA,2992,2991,0.14300000000000002,0.14300000000000002
00000011_000.png,Effusion,0,11,74,M,PA,2638,2449,0.14300000000000002,0.14300000000000002
00000012_000.png,Effusion|Mass,0,12,76,M,PA,2992,2991,0.14300000000000002,0.14300000000000002
00000732_005.png,Cardiomegaly|Effusion|Fibrosis|Pleural_Thickening|Pneumothorax,5,732,85,F,AP,2500,2048,0.168,0.168
00000830_000.png,Atelectasis|Infiltration|Mass,0,830,51,F,PA,2922,2991,0.14300000000000002,0.14300000000000002
00001688_000.png,Infiltration|Nodule,0,1688,59,F,PA,2048,2500,0.168,0.168
00001836_082.png,Atelectasis|Nodule|Mass,82,1836,49,F,AP,2500,2048,0.168,0.168
00005066_030.png,Cardiomegaly|Effusion|Infiltration,30,5066,51,M,AP,2500,2048,0.168,0.168
00010172_001.png,Atelectasis|Effusion,1,10172,59,F,AP,2500,2048,0.168,0.168
00011136_002.png,Consolidation|Effusion|Pneumonia,21,11136,31,M,PA,2992,2991,0.14300000000000002,0.14300000000000002
00013118_008.png,Atelectasis,8,13118,69,M,PA,2992,2991,0.14300000000000002,0.14300000000000002
00019892_003.png,Pneumothorax,3,19892,58,F,PA,2048,2500,0.168,0.168
00020259_002.png,Consolidation|Infiltration|Pneumonia,2,20259,52,F,AP,3056,2544,0.139,0.139
00023075_033.png,Mass,33,23075,31,M,PA,2992,2991,0.14300000000000002,0.14300000000000002
"""

# 9 header fields, 6 per row, as in the distributed file; 'Infiltrate' is the box file's spelling.
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

NIH_BBOX_ROWS = """\
00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661
00001836_082.png,Atelectasis,170.124867724868,569.972486772487,163.62328042328,109.443386243386
00000830_000.png,Atelectasis,575.390476190476,489.786243386243,280.651851851852,115.944973544974
00005066_030.png,Cardiomegaly,277.152542372881,459.15480998411,540.203389830509,301.559322033898
00000732_005.png,Cardiomegaly,427.932203389831,464,412.203389830508,344.949152542373
00010172_001.png,Effusion,188.302222222222,695.504600694444,47.7866666666667,51.2
00005066_030.png,Effusion,149.617777777778,728.50015625,27.3066666666667,65.9911111111111
00020259_002.png,Infiltrate,611.555555555556,535.077934027778,249.173333333333,199.111111111111
00005066_030.png,Infiltrate,531.911111111111,499.806822916667,242.346666666667,163.84
00023075_033.png,Mass,239.502222222222,535.077934027778,72.8177777777778,65.9911111111111
00001836_082.png,Mass,336.998941798942,389.01164021164,139.784126984127,114.861375661376
00000830_000.png,Mass,309.908994708995,398.764021164021,96.4402116402116,120.279365079365
00001688_000.png,Nodule,667.496296296296,276.31746031746,122.446560846561,150.620105820106
00011136_002.png,Pneumonia,574.008888888889,574.90015625,229.831111111111,166.115555555556
00020259_002.png,Pneumonia,614.968888888889,558.971267361111,223.004444444444,197.973333333333
00019892_003.png,Pneumothorax,570.595555555556,119.789045138889,254.862222222222,98.9866666666667
00000732_005.png,Pneumothorax,613.831111111111,110.686822916667,172.942222222222,103.537777777778
"""

NIH_BOX_IMAGES = sorted({line.split(",", 1)[0] for line in NIH_BBOX_ROWS.splitlines()})

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")

PADCHEST_HEADER = (
    ",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,"
    "ViewPosition_DICOM,Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,"
    "PhotometricInterpretation_DICOM,PixelRepresentation_DICOM,PixelAspectRatio_DICOM,"
    "SpatialResolution_DICOM,BitsStored_DICOM,WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,"
    "Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,ExposureTime,"
    "RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,Localizations,"
    "LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS")

# Made up from the first real row: a row whose Labels are empty (xrv drops such rows).
PADCHEST_NULL_LABELS_ROW = (
    "99,99999999999999999999999999999999999999_nolabl.png,0,20150101,99999999999999999999999999999999999999,"
    "99999999999999999999999999999999999999,1950.0,F,POSTEROANTERIOR,PA,Manual review of DICOM fields,No,"
    "CR,ImagingDynamicsCompanyLtd,MONOCHROME2,0,None,None,12,2092,2251,1728,1872,250,2,2500,10,-1.42,"
    "4765777, sin hallazg patolog edad pacient .,Physician,,[],[],[],[]\n")

RSNA_LABELS_HEADER = "patientId,x,y,width,height,Target"

RSNA_DICOM_HEADER = (",BodyPartExamined,ConversionType,Filename,InstanceNumber,Modality,PatientAge,PatientID,"
                     "PatientOrientation,PatientSex,PixelSpacing,SamplesPerPixel,SeriesNumber,ViewPosition")

PADCHEST_ROWS = """\
172,156420045069427647695993370673615918248_hz6jg1.png,0,20161007,156420045069427647695993370673615918248,54428132398587254405390595445171533698,1979.0,F,PA,PA,Manual review of DICOM fields,No,DX,PhilipsMedicalSystems,MONOCHROME2,0,None,0.148,12,2047.5,4095,2726,2806,None,1,1100,4,348,5240678, atelectasi subsegmentari basal izquierd . probabl consolidacion lid visualiz rx lateral .,Physician,"['consolidation', 'laminar atelectasis']","['loc subsegmental', 'loc right lower lobe', 'loc basal', 'loc left']","[['consolidation', 'loc right lower lobe'], ['laminar atelectasis', 'loc subsegmental', 'loc basal', 'loc left']]",['C0521530'],['C0929165' 'C1261075' 'C1282378' 'C0443246']
7,3137231742710829928-247610802266403640553_kine6a.png,0,20150804,3137231742710829928-247610802266403640553,93535126770783451980359712286922420997,1957.0,M,nan,PA,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,"['1', '1']",0.143,12,2047.0,4095.0,2968,2973,0,0,None,0,299,4969767, radiografi actual comp con previ 26 juni persistent derram pleural derech . pequen atelectasi subsegmentari bas izquierd . sutur cerclaj esternotomi medi . engros pleural apical izquierd .,Physician,"['laminar atelectasis', 'pleural effusion', 'apical pleural thickening', 'suture material', 'sternotomy']","['loc basal', 'loc subsegmental', 'loc pleural', 'loc right', 'loc apical', 'loc left']","[['laminar atelectasis', 'loc subsegmental', 'loc basal', 'loc left'], ['pleural effusion', 'loc pleural', 'loc right'], ['apical pleural thickening', 'loc pleural', 'loc left', 'loc apical'], ['suture material', 'sternotomy']]",['C2073625' 'C4305366' 'C0185792'],['C1282378' 'C0929165' 'C0032225' 'C0444532' 'C0734296' 'C0443246']
33,184310702224069058068590499996908398488_yjqmua.png,0,20150226,184310702224069058068590499996908398488,275399192536152976712005368676646344887,1935.0,M,nan,PA,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,"['1', '1']",0.143,12,2047.0,4095.0,2292,3000,0,0,None,0,312,4870922, cambi pulmonar cronic . marcapas tricameral . no identific imagen sugest neumotorax .,Physician,"['pacemaker', 'chronic changes']",[],"[['pacemaker'], ['chronic changes'], ['chronic changes'], ['normal']]",['C0030163' 'C0742362'],[]
2,135803415504923515076821959678074435083_fzis7b.png,0,20150914,135803415504923515076821959678074435083,313572750430997347502932654319389875966,1929.0,M,POSTEROANTERIOR,PA,Manual review of DICOM fields,No,CR,ImagingDynamicsCompanyLtd,MONOCHROME2,0,None,None,12,2155,2880,3572,3732,320,3,3200,10,None,4991845, cambi pulmonar cronic sever . sign fibrosis bibasal . sutil infiltr pseudonodul milimetr vidri deslustr localiz bas . cifosis sever .,Physician,"['pulmonary fibrosis', 'chronic changes', 'kyphosis', 'pseudonodule', 'ground glass pattern']","['loc basal', 'loc basal bilateral']","[['pulmonary fibrosis', 'loc basal bilateral'], ['chronic changes'], ['kyphosis'], ['pseudonodule', 'ground glass pattern', 'loc basal']]",['C0034069' 'C0742362' 'C2115817' 'C3544344'],['C1282378']
51,128060267991587422580475423001969971705_pjiogk.png,0,20160225,128060267991587422580475423001969971705,295924120130301648307550461274041646613,1940.0,M,nan,PA,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,"['1', '1']",0.2000000029802,12,2047.0,4095.0,1760,2140,None,None,None,None,1401,5083631, aparent cardiomegali ensanch mediastin superior expens lin paravertebral escas espiracion torac .,Physician,"['cardiomegaly', 'superior mediastinal enlargement']","['loc paravertebral', 'loc cardiac', 'loc mediastinum', 'loc superior mediastinum']","[['cardiomegaly', 'superior mediastinal enlargement', 'loc paravertebral', 'loc cardiac', 'loc mediastinum', 'loc superior mediastinum']]",['C0018800' 'C4273001'],['C0442150' 'C1522601' 'C0025066' 'C0230147']
0,20536686640136348236148679891455886468_k6ga29.png,0,20140915,20536686640136348236148679891455886468,839860488694292331637988235681460987,1930.0,F,POSTEROANTERIOR,PA,Manual review of DICOM fields,No,CR,ImagingDynamicsCompanyLtd,MONOCHROME2,0,None,None,12,2092,2251,1728,1872,250,2,2500,10,-1.42,4765777, sin hallazg patolog edad pacient .,Physician,['normal'],[],"[['normal'], ['normal']]",[],[]
261,115979936197018215044571384008136083135_eemtsr.png,0,20150111,115979936197018215044571384008136083135,211021492137317598419150409256678607092,1970.0,F,nan,PA,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,"['1', '1']",0.143,12,2047.0,4095.0,2430,3000,0,0,None,0,370,4837883, infiltr aument tram broncovascul infrahili derech . atelectasi infiltr lii . pinzamient sen costofren izquierd .,Physician,"['bronchovascular markings', 'lobar atelectasis', 'costophrenic angle blunting', 'infiltrates']","['loc left lower lobe', 'loc infrahilar', 'loc right', 'loc costophrenic angle', 'loc left costophrenic angle', 'loc bronchi']","[['bronchovascular markings', 'infiltrates', 'loc bronchi', 'loc infrahilar', 'loc right'], ['lobar atelectasis', 'infiltrates', 'loc left lower lobe'], ['costophrenic angle blunting', 'loc left costophrenic angle', 'loc costophrenic angle']]",['C2073518' 'C0742855' 'C0277877'],['C1261077' 'C0444532' 'C0230151' 'C0504100' 'C0006255']
1115,149869698076903420965553365056980475515_snqfr3.png,0,20150413,149869698076903420965553365056980475515,253178863765393504166948441779867814196,1937.0,F,POSTEROANTERIOR,PA,Manual review of DICOM fields,No,CR,ImagingDynamicsCompanyLtd,MONOCHROME2,0,None,None,12,None,None,3696,3920,320,3,3200,10,None,4895602, ocupacion sen costofren izquierd probabl gras . imag broncogram retrocardiac valor cambi inflamatori caract cronic .,Physician,"['chronic changes', 'mediastinic lipomatosis', 'air bronchogram']","['loc bronchi', 'loc left costophrenic angle', 'loc costophrenic angle', 'loc retrocardiac']","[['chronic changes', 'air bronchogram', 'loc bronchi', 'loc retrocardiac'], ['mediastinic lipomatosis', 'loc left costophrenic angle', 'loc costophrenic angle']]",['C0742362' 'C1333298' 'C3669021'],['C0006255' 'C0504100' 'C0230151']
1,135803415504923515076821959678074435083_fzis7d.png,0,20150914,135803415504923515076821959678074435083,313572750430997347502932654319389875966,1929.0,M,LATERAL,L,Manual review of DICOM fields,No,CR,ImagingDynamicsCompanyLtd,MONOCHROME2,0,None,None,12,2631,2065,3296,3236,400,10,10000,25,None,4991845, cambi pulmonar cronic sever . sign fibrosis bibasal . sutil infiltr pseudonodul milimetr vidri deslustr localiz bas . cifosis sever .,Physician,"['pulmonary fibrosis', 'chronic changes', 'kyphosis', 'pseudonodule', 'ground glass pattern']","['loc basal', 'loc basal bilateral']","[['pulmonary fibrosis', 'loc basal bilateral'], ['chronic changes'], ['kyphosis'], ['pseudonodule', 'ground glass pattern', 'loc basal']]",['C0034069' 'C0742362' 'C2115817' 'C3544344'],['C1282378']
201,172548964592157267755522496623963445785_3moi59.png,0,20170126,172548964592157267755522496623963445785,57300588182903237015187839350773060111,1930.0,M,AP,AP,Manual review of DICOM fields,No,DX,PhilipsMedicalSystems,MONOCHROME2,0,None,0.148,12,2047.5,4095,2835,2745,None,2,2400,10,1311,5312320, imagen aument densid pseudonodul nivel basal derech izquierd sugest primer posibil diagnost dad no estudi previ dia 29 11 16 proces infecci inflamatori men probabl parec afectacion metastas primari,Physician,"['pseudonodule', 'pneumonia']","['loc basal', 'loc right', 'loc left']","[['pseudonodule', 'pneumonia', 'loc basal', 'loc right', 'loc left']]",['C0032285'],['C1282378' 'C0444532' 'C0443246']
8,313723174271082992847610802266403640553-4_hhi4rq.png,0,20150521,313723174271082992847610802266403640553-4,93535126770783451980359712286922420997,1957.0,M,nan,AP_horizontal,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,None,0.2,12,2047.0,4095.0,1760,2140,None,None,None,None,304,4923353, sin grand cambi con respect estudi previ ayer con comp .,Physician,['unchanged'],[],[['unchanged']],[],[]
4,113855343774216031107737439268243531979_3k951n.png,0,20150717,113855343774216031107737439268243531979,50783093527901818115346441867348318648,1925.0,F,LATERAL,L,Manual review of DICOM fields,No,CR,ImagingDynamicsCompanyLtd,MONOCHROME2,0,None,None,12,2853,1871,3732,2908,320,6,6400,20,None,4955977, . . siluet cardi mediastin dentr normal . cambi pulmonar cronic . . . sen costofren libr . . . no sign enfermed metastas .,Physician,['chronic changes'],"['loc cardiac', 'loc mediastinum', 'loc costophrenic angle']","[['chronic changes'], ['chronic changes'], ['normal', 'loc cardiac', 'loc mediastinum'], ['normal', 'loc cardiac', 'loc mediastinum'], ['normal'], ['normal'], ['normal', 'loc costophrenic angle']]",['C0742362'],['C1522601' 'C0025066' 'C0230151']
336,144238093861007575291420728879881361908_ajle4j.png,0,20161214,144238093861007575291420728879881361908,220650979448803049770066238708867858435,2012.0,F,nan,AP,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,"['1', '1']",0.143,12,2047.0,4095.0,1851,1614,0,0,None,0,945,5285010, minim infiltr infrahili derech si clinic compat proces neumon infecci .,Physician,"['pneumonia', 'infiltrates']","['loc infrahilar', 'loc right']","[['pneumonia', 'infiltrates', 'loc infrahilar', 'loc right']]",['C0032285' 'C0277877'],['C0444532']
"""

CHEXPERT_ROWS = """\
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,AP,,,,,,1.0,,,,0.0,,,,
CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Female,20,Frontal,PA,1.0,0.0,,,,,0.0,,,,0.0,,,
CheXpert-v1.0-small/train/patient00004/study1/view2_lateral.jpg,Female,20,Lateral,,1.0,0.0,,,,,0.0,,,,0.0,,,
CheXpert-v1.0-small/train/patient00005/study1/view1_frontal.jpg,Male,33,Frontal,PA,1.0,,0.0,,,,0.0,,,,0.0,,,1.0
CheXpert-v1.0-small/train/patient00005/study1/view2_lateral.jpg,Male,33,Lateral,,1.0,,0.0,,,,0.0,,,,0.0,,,1.0
CheXpert-v1.0-small/train/patient00005/study2/view1_frontal.jpg,Male,33,Frontal,AP,,,,,,,,,,1.0,,,,
CheXpert-v1.0-small/train/patient00005/study2/view2_frontal.jpg,Male,33,Frontal,AP,,,,,,,,,,1.0,,,,
CheXpert-v1.0-small/train/patient00006/study1/view1_frontal.jpg,Female,42,Frontal,AP,1.0,0.0,,,,,,,,,0.0,,,
CheXpert-v1.0-small/train/patient00007/study1/view1_frontal.jpg,Male,69,Frontal,AP,,,1.0,1.0,,,,,1.0,1.0,0.0,,0.0,1.0
CheXpert-v1.0-small/train/patient00007/study2/view1_frontal.jpg,Male,69,Frontal,AP,,1.0,,1.0,,,,,1.0,0.0,0.0,,0.0,1.0
CheXpert-v1.0-small/train/patient00008/study1/view1_frontal.jpg,Male,81,Frontal,AP,,,,1.0,,,,,,,1.0,,,1.0
CheXpert-v1.0-small/train/patient00008/study2/view1_frontal.jpg,Male,81,Frontal,AP,,,,1.0,,,,,,0.0,1.0,,,1.0
CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.jpg,Male,76,Frontal,PA,,,1.0,,,0.0,,,1.0,,,,,
CheXpert-v1.0-small/train/patient00009/study1/view2_lateral.jpg,Male,76,Lateral,,,,1.0,,,0.0,,,1.0,,,,,
CheXpert-v1.0-small/train/patient00010/study1/view1_frontal.jpg,Female,50,Frontal,PA,1.0,0.0,,0.0,,,,,,,0.0,,,
CheXpert-v1.0-small/train/patient00010/study1/view2_lateral.jpg,Female,50,Lateral,,1.0,0.0,,0.0,,,,,,,0.0,,,
CheXpert-v1.0-small/train/patient00011/study13/view1_frontal.jpg,Female,22,Frontal,PA,,0.0,,,,,0.0,,0.0,0.0,0.0,,,
CheXpert-v1.0-small/train/patient00011/study13/view2_lateral.jpg,Female,22,Lateral,,,0.0,,,,,0.0,,0.0,0.0,0.0,,,
CheXpert-v1.0-small/train/patient00011/study1/view1_frontal.jpg,Female,19,Frontal,AP,,,,1.0,,,-1.0,,,-1.0,-1.0,,,1.0
CheXpert-v1.0-small/train/patient00011/study5/view1_frontal.jpg,Female,19,Frontal,AP,,,,1.0,,,,,,1.0,,,,
CheXpert-v1.0-small/train/patient00011/study7/view1_frontal.jpg,Female,19,Frontal,AP,,,,1.0,,0.0,,,,,,,,1.0
CheXpert-v1.0-small/train/patient00011/study4/view1_frontal.jpg,Female,19,Frontal,AP,,,,1.0,,,,,-1.0,1.0,-1.0,,,1.0
CheXpert-v1.0-small/train/patient00011/study2/view1_frontal.jpg,Female,19,Frontal,AP,,,,1.0,,,1.0,,,,1.0,,,1.0
CheXpert-v1.0-small/train/patient00011/study10/view1_frontal.jpg,Female,19,Frontal,AP,,,,1.0,,1.0,,,,,1.0,,,1.0
CheXpert-v1.0-small/train/patient00011/study9/view1_frontal.jpg,Female,19,Frontal,AP,,1.0,,-1.0,,,,,,,1.0,,,1.0
CheXpert-v1.0-small/train/patient00011/study11/view1_frontal.jpg,Female,19,Frontal,AP,,,,1.0,,1.0,,,,,1.0,,,1.0
CheXpert-v1.0-small/train/patient00012/study3/view1_frontal.jpg,Female,61,Frontal,PA,,0.0,,,,,0.0,0.0,,0.0,1.0,,,1.0
CheXpert-v1.0-small/train/patient00012/study2/view1_frontal.jpg,Female,55,Frontal,PA,,-1.0,-1.0,0.0,,,0.0,,,,0.0,,,1.0
CheXpert-v1.0-small/train/patient00013/study1/view1_frontal.jpg,Male,36,Frontal,PA,1.0,0.0,,,,,,,,,0.0,,,
CheXpert-v1.0-small/train/patient00014/study1/view1_frontal.jpg,Female,43,Frontal,PA,,-1.0,,0.0,,,,,,0.0,0.0,,,
CheXpert-v1.0-small/train/patient00016/study1/view1_frontal.jpg,Female,54,Frontal,PA,,,,1.0,,,1.0,,,0.0,,1.0,1.0,
CheXpert-v1.0-small/train/patient00018/study1/view1_frontal.jpg,Male,44,Frontal,PA,,0.0,,1.0,,0.0,0.0,,-1.0,0.0,1.0,,,
CheXpert-v1.0-small/train/patient00019/study1/view1_frontal.jpg,Female,46,Frontal,PA,,,,,1.0,,,,,0.0,,,,
"""

RSNA_LABEL_ROWS = """\
0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0
00313ee0-9eaa-42f4-b0ab-c148ed3241cd,,,,,0
00322d4d-1c29-4943-afc9-b6754be640eb,,,,,0
003d8fa0-6bf1-40ed-b54c-ac657f8495c5,,,,,0
00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1
00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1
00569f44-917d-4c86-a842-81832af98c30,,,,,0
006cec2e-6ce2-4549-bffa-eadfcd1e9970,,,,,0
00704310-78a8-4b38-8475-49f4573b2dbb,323.0,577.0,160.0,104.0,1
00704310-78a8-4b38-8475-49f4573b2dbb,695.0,575.0,162.0,137.0,1
008c19e8-a820-403a-930a-bc74a4053664,,,,,0
009482dc-3db5-48d4-8580-5c89c4f01334,,,,,0
009eb222-eabc-4150-8121-d5a6d06b8ebf,,,,,0
00a85be6-6eb0-421d-8acf-ff2dc0007e8a,,,,,0
00aecb01-a116-45a2-956c-08d2fa55433f,288.0,322.0,94.0,135.0,1
00aecb01-a116-45a2-956c-08d2fa55433f,547.0,299.0,119.0,165.0,1"""

RSNA_DICOM_HEADER_ROWS = """\
1077,CHEST,WSD,0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm,1.0,CR,51,0004cfab-14fd-4e49-80ba-63a80b6bddd6,,F,0.14300000000000002,1.0,1.0,PA
4382,CHEST,WSD,006cec2e-6ce2-4549-bffa-eadfcd1e9970.dcm,1.0,CR,78,006cec2e-6ce2-4549-bffa-eadfcd1e9970,,M,0.14300000000000002,1.0,1.0,PA
8277,CHEST,WSD,009eb222-eabc-4150-8121-d5a6d06b8ebf.dcm,1.0,CR,54,009eb222-eabc-4150-8121-d5a6d06b8ebf,,F,0.168,1.0,1.0,PA
8637,CHEST,WSD,00569f44-917d-4c86-a842-81832af98c30.dcm,1.0,CR,54,00569f44-917d-4c86-a842-81832af98c30,,M,0.139,1.0,1.0,AP
9519,CHEST,WSD,003d8fa0-6bf1-40ed-b54c-ac657f8495c5.dcm,1.0,CR,28,003d8fa0-6bf1-40ed-b54c-ac657f8495c5,,M,0.14300000000000002,1.0,1.0,PA
9897,CHEST,WSD,00436515-870c-4b36-a041-de91049b9ab4.dcm,1.0,CR,32,00436515-870c-4b36-a041-de91049b9ab4,,F,0.139,1.0,1.0,AP
12507,CHEST,WSD,00704310-78a8-4b38-8475-49f4573b2dbb.dcm,1.0,CR,75,00704310-78a8-4b38-8475-49f4573b2dbb,,M,0.14300000000000002,1.0,1.0,PA
14281,CHEST,WSD,00322d4d-1c29-4943-afc9-b6754be640eb.dcm,1.0,CR,19,00322d4d-1c29-4943-afc9-b6754be640eb,,M,0.168,1.0,1.0,AP
15459,CHEST,WSD,009482dc-3db5-48d4-8580-5c89c4f01334.dcm,1.0,CR,63,009482dc-3db5-48d4-8580-5c89c4f01334,,M,0.14300000000000002,1.0,1.0,PA
20370,CHEST,WSD,00aecb01-a116-45a2-956c-08d2fa55433f.dcm,1.0,CR,6,00aecb01-a116-45a2-956c-08d2fa55433f,,F,0.168,1.0,1.0,AP
20466,CHEST,WSD,00313ee0-9eaa-42f4-b0ab-c148ed3241cd.dcm,1.0,CR,48,00313ee0-9eaa-42f4-b0ab-c148ed3241cd,,F,0.19431099999999998,1.0,1.0,PA
24688,CHEST,WSD,008c19e8-a820-403a-930a-bc74a4053664.dcm,1.0,CR,59,008c19e8-a820-403a-930a-bc74a4053664,,F,0.19431099999999998,1.0,1.0,PA
24799,CHEST,WSD,00a85be6-6eb0-421d-8acf-ff2dc0007e8a.dcm,1.0,CR,48,00a85be6-6eb0-421d-8acf-ff2dc0007e8a,,M,0.168,1.0,1.0,PA
"""

# (width, height) of the generated images: NIH and RSNA are square like the real 1024 px files
# (boxes are in that 1024 x 1024 frame, which xrv scales to the image width); CheXpert and
# PadChest vary, as theirs do.
IMAGE_SIZES = {"nih": (64, 64), "rsna": (64, 64), "chexpert": (48, 40), "padchest": (40, 56)}


def pattern(width: int, height: int, seed: int, maxval: int = 255) -> np.ndarray:
    """A deterministic grey test pattern spanning the whole range ``0..maxval``."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx * 7 + yy * 3 + seed * 41) % 97 / 96.0
    base[0, 0], base[-1, -1] = 0.0, 1.0  # the full range, so scaling errors show
    dtype = np.uint16 if maxval > 255 else np.uint8
    return np.round(base * maxval).astype(dtype)


def _save(path: Path, array: np.ndarray, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        Image.fromarray(array).save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(path, format="PNG")  # uint16 -> a 16-bit grey PNG


def _column(text: str, index: int) -> list[str]:
    return [row[index] for row in csv.reader(io.StringIO(text)) if row]


def write_nih(root: Path) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017_v2020.csv").write_text(NIH_ENTRY_HEADER + "\n" + NIH_ENTRY_ROWS, encoding="utf-8")
    (root / "BBox_List_2017.csv").write_text(NIH_BBOX_HEADER + "\n" + NIH_BBOX_ROWS, encoding="utf-8")
    for seed, name in enumerate(_column(NIH_ENTRY_ROWS, 0)):
        _save(root / "images" / name, pattern(*IMAGE_SIZES["nih"], seed), "PNG")
    return root


def write_chexpert(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(CHEXPERT_HEADER + "\n" + CHEXPERT_ROWS, encoding="utf-8")
    for seed, path in enumerate(_column(CHEXPERT_ROWS, 0)):
        relative = path.split("/", 1)[1]  # without CheXpert-v1.0-small/, as xrv resolves it
        _save(root / relative, pattern(*IMAGE_SIZES["chexpert"], seed), "JPEG")
    return root


def write_padchest(root: Path) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    text = PADCHEST_HEADER + "\n" + PADCHEST_ROWS + PADCHEST_NULL_LABELS_ROW
    with gzip.open(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", "wt",
                   encoding="utf-8", newline="") as fh:
        fh.write(text)
    for seed, name in enumerate(_column(PADCHEST_ROWS + PADCHEST_NULL_LABELS_ROW, 1)):
        _save(root / "images" / name, pattern(*IMAGE_SIZES["padchest"], seed, maxval=65535), "PNG")
    return root


def write_rsna(root: Path) -> Path:
    (root / "stage_2_train_images_jpg").mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text(RSNA_LABELS_HEADER + "\n" + RSNA_LABEL_ROWS,
                                                   encoding="utf-8")
    (root / "kaggle_stage_2_train_images_dicom_headers.csv").write_text(
        RSNA_DICOM_HEADER + "\n" + RSNA_DICOM_HEADER_ROWS, encoding="utf-8")
    for seed, patient in enumerate(dict.fromkeys(_column(RSNA_LABEL_ROWS, 0))):
        _save(root / "stage_2_train_images_jpg" / f"{patient}.jpg", pattern(*IMAGE_SIZES["rsna"], seed),
              "JPEG")
    return root


def write_sample_data(folder: str | Path) -> dict[str, Path]:
    """Write the four sample datasets under ``folder``; the data root of every ``xrv-*`` dataset and
    concept set by name (``--data-root NAME=ROOT`` works with no other option)."""
    folder = Path(folder)
    nih = write_nih(folder / "nih")
    rsna = write_rsna(folder / "rsna")
    return {"xrv-nih": nih, "xrv-nih-bbox": nih, "xrv-chexpert": write_chexpert(folder / "chexpert"),
            "xrv-padchest": write_padchest(folder / "padchest"), "xrv-rsna": rsna, "xrv-rsna-bbox": rsna}
