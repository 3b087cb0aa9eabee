"""The demo corpus: seeded, reproducible Chinese resident appeals for every leaf category and grid.

It trains the demo classifier and drives benchmarks, so it has to look like real 12345 traffic:
first-person web/app messages and third-person call-taker summaries (来电人反映...), short complaints
and long narratives, place references a resident would use (a compound's colloquial name, a house
number on a road, "the school gate"), and some noise (typos, a second topic, phone numbers, no place
at all). Every appeal is composed from fragments -- opening, problem, duration, impact, previous
attempts, request -- so a few hand-written sentences per category multiply into many texts.

Content is keyed by the leaf category's *name* (道路破损, 供水, ...), not its id, so a city whose
catalogue uses the usual names gets the rich sentences; a leaf without hand-written content gets
generic sentences built from its name and `keywords`.

Pure python, `random.Random(seed)` only: the same seed gives the same records, another seed other
texts (a test set generated with another seed is not the training text).

    python -m services.classifier.corpus --out var/corpus.jsonl --per-category 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.city import City, GridInfo, load_city

APPEAL_TYPES = ("诉求", "投诉", "咨询", "求助", "建议")
_TYPE_WEIGHTS = (35, 30, 15, 10, 10)

MIN_TEXT, MAX_TEXT = 15, 400
MIN_TITLE, MAX_TITLE = 6, 25

# Target shares. Urgent appeals only come from categories with urgent content (gas leaks, people
# stuck in lifts, ...), so those categories get a higher rate to reach the overall share.
URGENT_SHARE = 0.05
NO_ADDRESS_SHARE = 0.15
TYPO_SHARE = 0.05
SECOND_TOPIC_SHARE = 0.10


# --- content -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    """Hand-written fragments of one leaf category. `{p}` in a problem marks where the place goes."""

    problems: tuple[str, ...]
    impacts: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()
    asks: tuple[str, ...] = ()  # questions, for 咨询
    urgent: tuple[str, ...] = ()  # problems that make the appeal urgent
    timely: bool = False  # events happen at a time of day (noise, outages), so "昨晚11点多" fits


def _lines(s: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in s.strip().splitlines() if line.strip())


def _topic(p: str, i: str = "", r: str = "", a: str = "", u: str = "", timely: bool = False) -> Topic:
    return Topic(_lines(p), _lines(i), _lines(r), _lines(a), _lines(u), timely)


TOPICS: dict[str, Topic] = {
    "道路破损": _topic(
        p="""
        {p}的路面坑坑洼洼，到处是坑
        {p}路面出现了一个大坑，直径有半米多
        {p}的人行道地砖松动翘起，一踩就溅一身泥水
        {p}那段路的沥青被压坏了，路面开裂很严重
        {p}前段时间挖开修管道，回填以后一直没有恢复路面
        {p}路面下沉，形成一个坑洼，下雨天积满了水看不出深浅
        {p}的道路破损，电动车经过时颠得厉害
        {p}路边的盲道砖缺了好几块
        {p}的路面修补过好几次，没几天又坏了
        """,
        i="""
        已经有骑电动车的人在这儿摔倒了
        晚上看不清，很容易出事
        车辆经过都得绕行，早晚高峰很堵
        老人和孩子走路要格外小心
        """,
        r="""
        希望尽快安排修补路面
        请市政部门尽快派人维修
        希望能彻底修好，而不是简单填一下
        """,
        a="""
        请问路面破损应该找哪个部门维修？
        请问这条路归哪个单位养护？
        """,
        u="""
        {p}路面突然塌陷，出现一个一米多深的大坑，已经有车陷进去了
        """,
    ),
    "路灯故障": _topic(
        timely=True,
        p="""
        {p}的路灯不亮了
        {p}这一段好几盏路灯都坏了，晚上黑灯瞎火的
        {p}的路灯一直闪个不停，时亮时灭
        {p}的路灯白天亮着，晚上反而不亮
        {p}有一根灯杆歪了，灯罩也掉了
        {p}晚上没有照明，整条路黑漆漆的
        {p}新装的路灯一直没通电
        {p}的路灯被树枝挡住了，基本照不到路面
        """,
        i="""
        晚上下班回家要摸黑走路
        老人晚上都不敢出门
        晚上很不安全，担心有人抢包
        前几天有人晚上在这儿摔了一跤
        """,
        r="""
        请尽快安排人维修路灯
        希望尽快恢复照明
        """,
        a="""
        请问路灯坏了应该找哪里报修？
        """,
        u="""
        {p}有根灯杆被车撞倒了，电线露在外面，还在冒火花
        """,
    ),
    "井盖缺失": _topic(
        p="""
        {p}有个井盖不见了，只剩一个黑窟窿
        {p}的井盖碎了一半，用几根树枝挡着
        {p}的井盖松动，车一压就哐哐响
        {p}的下水井盖比路面低了一截，形成了一个坑
        {p}的窨井盖被人偷了，现在就放了个锥桶
        {p}有个雨水井盖翘起来了
        {p}井盖缺失，旁边连个警示标志都没有
        {p}的井盖和路面不平，骑车经过很危险
        """,
        i="""
        小孩子放学经常从这里走
        晚上看不见很容易掉下去
        车辆经过响声很大，半夜都能听见
        """,
        r="""
        请尽快补装井盖
        希望尽快找到权属单位来处理
        """,
        a="""
        请问路上的井盖归哪个单位管？
        """,
        u="""
        {p}的井盖丢了，刚才有个小孩差点掉下去
        {p}井盖没了，有人骑车掉进去受伤了
        """,
    ),
    "排水堵塞": _topic(
        timely=True,
        p="""
        {p}的下水道堵了，污水都冒到路面上了
        {p}一下雨就积水，水能没过脚踝
        {p}的化粪池满了，粪水往外溢
        {p}的雨水箅子被垃圾堵住了，积水排不出去
        {p}一楼卫生间返水，整个单元的下水管道都不通
        {p}的污水井往外冒黑水，臭气熏天
        {p}排水管道破裂，污水渗到路上
        {p}路边的排水沟淤积严重，很久没有清掏了
        """,
        i="""
        味道特别难闻，窗户都不敢开
        一楼住户家里都进水了
        出门都得蹚水
        夏天蚊虫特别多
        """,
        r="""
        请尽快安排疏通管道
        希望彻底解决积水问题
        """,
        u="""
        {p}积水已经倒灌进地下室，水位还在上涨
        """,
    ),
    "占道经营": _topic(
        timely=True,
        p="""
        {p}有很多流动摊贩摆摊卖菜
        {p}的商户把货架摆到人行道上，出店经营
        {p}每天晚上都有烧烤摊占道经营，桌子摆满了人行道
        {p}早市的小商贩把路都占了，车根本过不去
        {p}有人开着三轮车在路口卖水果，一停就是一整天
        {p}的饭馆把桌椅摆到门外经营
        {p}的夜市摊位占了半条马路
        {p}的修车铺长期占用人行道修车
        """,
        i="""
        行人只能走到机动车道上，很危险
        收摊后满地垃圾没人管
        油烟和吆喝声影响楼上住户
        消防通道也被堵住了
        """,
        r="""
        希望城管部门加强管理
        请尽快清理占道摊位
        希望能规范设置摆摊点
        """,
        a="""
        请问在小区门口摆摊需要办什么手续吗？
        """,
    ),
    "垃圾清运": _topic(
        timely=True,
        p="""
        {p}的垃圾好几天没人清运了，堆得像小山一样
        {p}的垃圾桶早就满了，垃圾都溢出来了
        {p}有人乱倒建筑垃圾，堆了一大堆
        {p}的垃圾站臭味很大，污水横流
        {p}垃圾分类的桶摆了，但是收的时候又混在一起
        {p}的路面很久没有人清扫了，落叶和垃圾到处都是
        {p}的垃圾清运车每天凌晨收垃圾，声音很大
        {p}有人扔的旧沙发旧床垫，放了好久没人拉走
        """,
        i="""
        天气热了臭得不行，苍蝇蚊子乱飞
        晚上老鼠到处跑
        严重影响小区环境卫生
        """,
        r="""
        请尽快安排清运
        希望增加清运频次
        """,
        a="""
        请问装修垃圾应该怎么处理，要交费吗？
        """,
    ),
    "违章建筑": _topic(
        timely=True,
        p="""
        {p}一楼住户私自扩建院子，把公共绿地圈进去了
        {p}有人在楼顶加盖了一层彩钢房
        {p}有家商户私搭乱建，在门前搭了个棚子
        {p}有业主把阳台往外扩建，破坏了楼体结构
        {p}有人在空地上盖了几间简易房出租
        {p}的违建已经举报过了，到现在还没拆
        {p}有人正在搭建违章建筑，晚上偷偷施工
        {p}有户人家把地下室挖深扩建
        """,
        i="""
        影响其他住户的采光和通风
        存在严重的安全隐患
        不处理的话别人都跟着学
        """,
        r="""
        请执法部门尽快调查并依法拆除
        希望尽快制止施工
        """,
        a="""
        请问举报违章建筑以后多长时间能处理？
        """,
    ),
    "园林绿化": _topic(
        p="""
        {p}的树枝长得太密了，挡住了窗户和路灯
        {p}有一棵枯死的大树，随时可能倒下来
        {p}的绿化带里杂草丛生，很久没人修剪
        {p}的树木长期不修剪，树枝都伸到电线上了
        {p}的草坪被人踩秃了，还有人在里面种菜
        {p}的杨絮特别多，满天飞
        {p}的行道树被砍了好几棵，不知道是谁砍的
        {p}绿化带浇水的水管破了，水流了一地
        """,
        i="""
        家里白天都得开灯
        刮大风的时候很危险
        有过敏的人出门都难受
        """,
        r="""
        请园林部门尽快来修剪
        希望尽快补种树木
        """,
        u="""
        {p}的一棵大树被风刮倒了，压在路上，还压着电线
        """,
    ),
    "噪音扰民": _topic(
        timely=True,
        p="""
        {p}的工地每天晚上施工到凌晨，噪音特别大
        {p}有人跳广场舞，音响开得特别大
        {p}楼上装修，周末一大早就开始用电钻
        {p}的KTV每天半夜都很吵
        {p}的饭店空调外机和排风扇噪音很大，24小时不停
        {p}有商户用大喇叭循环播放促销广告
        {p}夜间施工没有任何公示，挖掘机半夜还在作业
        {p}有人半夜在楼下喝酒吵闹
        """,
        i="""
        吵得根本睡不着觉
        家里老人心脏不好，受不了
        孩子马上要考试了，没法学习
        上了一天班，晚上还休息不好
        """,
        r="""
        希望尽快制止扰民行为
        请相关部门来现场测一下噪音
        """,
        a="""
        请问晚上几点以后就不能施工了？
        请问装修噪音归哪个部门管？
        """,
    ),
    "大气污染": _topic(
        timely=True,
        p="""
        {p}的饭店油烟直排，没有安装净化设备
        {p}的工地扬尘很大，没有覆盖也不洒水
        {p}有人焚烧垃圾，浓烟滚滚
        {p}附近有家工厂排放废气，有股刺鼻的异味
        {p}的烧烤摊烟特别大，整条街都是烟
        {p}拉土的渣土车不苫盖，一路撒土
        {p}的汽修店露天喷漆，油漆味很重
        {p}有人在空地上烧树叶和杂草
        """,
        i="""
        家里窗户根本不敢开
        晾的衣服都是一股味
        孩子咳嗽好几天了
        呛得人喘不过气
        """,
        r="""
        希望环保部门来检查一下
        请尽快查处
        """,
    ),
    "水污染": _topic(
        timely=True,
        p="""
        {p}附近的河道水发黑发臭
        {p}有个排污口一直往河里排污水
        {p}的洗车店把污水直接排到雨水井里
        {p}附近河里漂着很多死鱼
        {p}附近的小作坊晚上偷排废水
        {p}的河面上全是垃圾和泡沫
        {p}的景观湖水变绿了，长满了藻
        {p}的餐馆把泔水倒进雨水口，流到河里去了
        """,
        i="""
        夏天一走过就臭得不行
        担心污染地下水
        河边散步的人都不来了
        """,
        r="""
        请环保部门取样检测
        希望查清污染源
        """,
    ),
    "物业服务": _topic(
        p="""
        {p}的物业什么都不管，楼道里的灯坏了好几个月
        {p}的保洁好几天才来打扫一次，楼道很脏
        {p}的门禁坏了，外面的人随便进出
        {p}的物业对业主态度很差，报修没人理
        {p}的物业把小区的公共区域租出去做生意
        {p}楼道里堆满了杂物，物业也不清理
        {p}的单元门坏了半年多，物业一直拖着不修
        {p}的物业公司要撤场，小区马上就没人管了
        {p}楼顶漏水，找物业维修说要业主自己出钱
        """,
        i="""
        业主们意见很大
        大家交了物业费却享受不到服务
        老人上下楼很不方便
        """,
        r="""
        请主管部门监督物业履行职责
        希望物业尽快整改
        """,
        a="""
        请问业主可以自己换物业公司吗，需要什么程序？
        请问怎么成立业委会？
        """,
    ),
    "物业费": _topic(
        p="""
        {p}的物业突然把物业费从每平米1块5涨到2块5，没有征求业主意见
        {p}的物业因为我家没交物业费就给停水
        {p}的物业强制收取二次供水加压费
        {p}的物业费收费标准没有公示
        {p}的物业天天上门催缴，还在楼道里贴欠费名单
        {p}物业收的电梯费和公摊电费不清不楚
        {p}的物业乱收费，装修还要交保证金和垃圾清运费
        {p}刚交完钥匙，物业就要求一次交三年物业费
        """,
        i="""
        严重侵害了业主的权益
        好多老人都搞不懂这些费用
        """,
        r="""
        请物价部门核查物业收费是否合规
        希望公开收费明细
        """,
        a="""
        请问物业费的收费标准是怎么定的？
        请问对物业服务不满意可以拒交物业费吗？
        """,
    ),
    "电梯故障": _topic(
        p="""
        {p}的电梯又坏了，这个月已经第三次了
        {p}的电梯运行时有异响，还会突然往下坠一下
        {p}的电梯年检合格证已经过期了
        {p}的电梯停运好几天了，物业说在等配件
        {p}的电梯门关不严，经常夹人
        {p}的电梯按钮失灵，到不了要去的楼层
        {p}的老楼想加装电梯，但是一楼住户不同意
        {p}的电梯维保公司很少来检修
        """,
        i="""
        家里有老人住十几楼，下不了楼
        大家每天坐电梯都提心吊胆
        孕妇和老人只能爬楼梯
        """,
        r="""
        请特种设备监管部门来检查
        希望尽快修好电梯
        """,
        a="""
        请问老旧小区加装电梯有补贴吗？
        """,
        u="""
        {p}的电梯突然停了，里面困着人，按警铃没人应
        有人被困在{p}的电梯里已经半个多小时了
        """,
    ),
    "房屋安全": _topic(
        p="""
        {p}的外墙瓷砖大面积脱落
        {p}的墙体出现很多裂缝，越来越宽
        {p}是七八十年代的老楼，楼板都裂了
        {p}楼上住户装修拆了承重墙
        {p}的房顶漏雨，墙皮都泡掉了
        {p}的阳台底板钢筋都露出来了
        {p}的楼梯扶手松动，楼梯台阶也有裂缝
        {p}的房子被鉴定为危房，但一直没人来处理
        """,
        i="""
        住在里面提心吊胆
        下面经常有人经过，砸到人就麻烦了
        一到下雨天家里就得拿盆接水
        """,
        r="""
        请住建部门来做房屋安全鉴定
        希望尽快排除危险
        """,
        a="""
        请问房屋安全鉴定去哪里申请？
        """,
        u="""
        {p}的外墙有一大块正在往下掉，下面就是人行道
        """,
    ),
    "拖欠工资": _topic(
        p="""
        我在{p}的一个工地干活，包工头拖欠了我们三个月的工资
        我在{p}的一家餐馆打工，老板欠了我两个月工资不给
        {p}的装修公司倒闭了，老板跑了，我们的工资没人发
        我之前在{p}的一家公司上班，离职以后公司一直拖着不结工资
        我们十几个农民工在{p}干了半年活，一分钱工资也没拿到
        {p}的公司没有和我签劳动合同，现在不认我的工资
        我在{p}的超市上班，公司无故克扣工资
        {p}的培训机构关门了，拖欠老师工资
        """,
        i="""
        家里老人孩子都等着这点钱用
        快过年了，连回家的路费都没有
        去找老板好几次都找不到人
        """,
        r="""
        希望劳动监察部门帮我们讨回工资
        请帮忙协调发放工资
        """,
        a="""
        请问被拖欠工资怎么申请劳动仲裁？
        请问没签劳动合同能要回工资吗？
        """,
    ),
    "社保医保": _topic(
        p="""
        我的社保卡丢了，想问怎么补办
        公司一直没给我交社保，现在才发现断缴了半年
        我在{p}的医院看病，医保报销比例跟说的不一样
        我父亲的养老金这个月没有按时到账
        我是在外地交的社保，现在想转到本地
        异地就医备案一直办不下来
        孩子的城乡居民医保不知道在哪里缴费
        单位按最低基数给我交社保，和实际工资差很多
        """,
        i="""
        现在看病都没法报销
        这关系到以后的退休待遇
        """,
        r="""
        请社保部门帮忙核实
        希望尽快帮我补缴
        """,
        a="""
        请问社保断缴了会有什么影响？
        请问医保报销需要准备哪些材料？
        """,
    ),
    "供水": _topic(
        timely=True,
        p="""
        {p}突然停水了，也没有提前通知
        {p}的水压特别低，楼上根本上不去水
        {p}的自来水发黄浑浊，还有一股怪味
        {p}路边的水管爆了，水哗哗地往外冒
        {p}的二次供水水箱好几年没清洗了
        {p}每天晚上用水高峰期都没水
        {p}的水表走得特别快，这个月水费翻了一倍
        {p}停水维修说好半天，到现在还没来水
        """,
        i="""
        做饭洗漱都成问题
        家里老人孩子没法生活
        这水根本不敢给孩子喝
        """,
        r="""
        请尽快恢复供水
        请水务部门来检测水质
        """,
        a="""
        请问这次停水什么时候能恢复？
        """,
        u="""
        {p}整栋楼停水一天多了，楼里还有卧床的老人
        {p}的主水管爆裂，水已经淹到了路面和地下车库
        """,
    ),
    "供电": _topic(
        timely=True,
        p="""
        {p}突然停电了，没有任何通知
        {p}这几天频繁跳闸停电，一天停好几次
        {p}的电压不稳，灯一闪一闪的，电器都烧坏了
        {p}的电线老化严重，外皮都裂开了
        {p}的变压器嗡嗡响，还冒过烟
        {p}的电线杆歪了，电线垂得很低
        {p}的电表箱门坏了，电线裸露在外面
        {p}一到夏天用电高峰就停电
        """,
        i="""
        冰箱里的东西都坏了
        大热天没有空调，老人受不了
        孩子晚上没法写作业
        """,
        r="""
        请供电公司尽快抢修
        希望彻底改造线路
        """,
        u="""
        {p}整栋楼停电停水，电梯也停了
        {p}的电线掉在地上，还在打火
        """,
    ),
    "燃气": _topic(
        timely=True,
        p="""
        {p}的燃气表不走字了，燃气公司一直不来换
        {p}的天然气压力不足，火很小做不了饭
        {p}新房交房两个月了还没有通燃气
        {p}的燃气管道锈蚀很严重
        {p}的燃气费计费有问题，一个月用了好几百
        {p}的燃气公司上门安检还要收费
        {p}的燃气管道被装修工人私自改了
        {p}的燃气卡充值以后表里没有显示
        """,
        i="""
        在家没法做饭
        担心有安全隐患
        """,
        r="""
        请燃气公司尽快派人检修
        希望给个明确的答复
        """,
        a="""
        请问燃气开户需要带什么材料？
        """,
        u="""
        {p}楼道里有很浓的煤气味，怀疑燃气泄漏
        {p}闻到一股很重的燃气味，好像是管道漏气了
        {p}的燃气管道被挖断了，正在往外漏气
        """,
    ),
    "供暖": _topic(
        timely=True,
        p="""
        {p}的暖气一点都不热，室温才十几度
        {p}的暖气片漏水，把楼下都淹了
        {p}已经到了供暖时间还没来暖气
        {p}的暖气上热下不热
        {p}交了采暖费，但是暖气一直不热
        {p}暖气管道里有很大的水流声
        {p}的热力管道在路面上冒热气
        {p}的暖气需要放气，但是找不到人
        """,
        i="""
        家里老人孩子都冻感冒了
        在家里都要穿羽绒服
        开空调取暖电费太贵
        """,
        r="""
        请热力公司上门检查
        希望尽快达到供暖标准
        """,
        a="""
        请问采暖费在哪里交？
        请问室温达不到标准可以退费吗？
        """,
    ),
    "公交": _topic(
        timely=True,
        p="""
        {p}附近的公交车经常甩站不停
        在{p}等车，公交车要等四十多分钟才来一趟
        坐车经过{p}的时候，公交司机开车急刹急停，态度也很差
        {p}的公交站牌被撞坏了一直没修
        {p}这边没有公交线路，居民出行很不方便
        {p}的公交末班车太早了
        公交车在{p}改了线路，也没有提前公示
        {p}的公交站没有候车亭，下雨都没地方躲
        """,
        i="""
        上班经常迟到
        老年人出行很不方便
        """,
        r="""
        建议增加公交班次
        请公交公司加强司机管理
        """,
        a="""
        请问老年人乘车卡在哪里办理？
        """,
    ),
    "出租车": _topic(
        timely=True,
        p="""
        在{p}打车，出租车司机拒载
        从{p}打出租车，司机故意绕路多收钱
        {p}的出租车不打表，一口价要五十
        在{p}叫的网约车，司机中途要求加价
        {p}的出租车排成一排占道揽客
        坐出租车时把手机落在车上了，在{p}下的车
        {p}的黑车公开拉客
        在{p}上车，司机一路抽烟打电话
        """,
        i="""
        感觉被宰了
        坐着很不安全
        """,
        r="""
        请交通部门查处
        希望能帮忙找回失物
        """,
        a="""
        请问出租车绕路应该怎么投诉？
        """,
    ),
    "停车": _topic(
        timely=True,
        p="""
        {p}的车辆乱停乱放，把路口都堵死了
        {p}的消防通道被私家车占了
        {p}停着一辆僵尸车，好几年没动过
        {p}的停车场收费太贵，也没有明码标价
        {p}车位太少，晚上回来根本没地方停车
        {p}有人用地锁私占公共车位
        {p}的电动车充电桩太少，大家都在抢
        {p}有货车长期停在路边，挡住了视线
        """,
        i="""
        救护车和消防车都进不来
        早上出门经常被堵
        """,
        r="""
        请交警来贴条处理
        希望规划一些停车位
        """,
        a="""
        请问小区里的地锁可以自己装吗？
        """,
    ),
    "食品安全": _topic(
        p="""
        {p}的超市在卖过期食品
        在{p}的一家餐馆吃完饭以后上吐下泻
        {p}的小饭馆后厨卫生很差，老鼠乱窜
        {p}有个无证经营的熟食摊
        {p}买的牛奶打开就是变质的
        {p}的早餐店用的油很黑，怀疑是地沟油
        {p}的小卖部卖三无食品给学生
        {p}的外卖店没有实体店面，就在居民楼里做饭
        """,
        i="""
        担心吃坏身体
        孩子吃了以后肚子疼
        """,
        r="""
        请市场监管部门检查
        要求商家赔偿
        """,
        u="""
        在{p}一起吃饭的十几个人都食物中毒了，已经有人送医院了
        """,
    ),
    "消费维权": _topic(
        p="""
        {p}的健身房突然关门了，我办的预付卡还有好几千没用完
        在{p}的商场买的衣服，质量有问题，商家不给退货
        {p}的理发店办卡时说的优惠和实际不一样
        {p}的超市标价和结账价格不一致
        {p}的手机店虚假宣传，卖的是翻新机
        {p}的美容院老板跑路了，很多会员卡退不了款
        在{p}的家具店订的家具迟迟不交货
        {p}的洗衣店把衣服洗坏了不赔
        """,
        i="""
        钱都打了水漂
        好多人都被骗了
        """,
        r="""
        希望帮忙协调退款
        请市场监管部门处理
        """,
        a="""
        请问预付卡退款应该找谁？
        """,
    ),
    "养老服务": _topic(
        p="""
        {p}的养老院护工对老人态度很差
        {p}附近没有老年餐桌，老人吃饭很不方便
        我母亲今年满80岁了，高龄津贴一直没发
        {p}的日间照料中心一直关着门
        想给家里失能老人申请居家养老服务
        {p}的养老院收费不透明，乱加钱
        {p}的独居老人好几天没出门了，邻居很担心
        {p}的社区养老驿站服务项目太少
        """,
        i="""
        子女都不在身边
        老人行动不便
        """,
        r="""
        希望民政部门管一管
        希望社区能上门看看
        """,
        a="""
        请问居家养老服务怎么申请？
        请问高龄津贴在哪里申请？
        """,
    ),
    "低保救助": _topic(
        p="""
        我家里有重病的病人，想申请低保
        我的低保这个月突然停了，也没人通知
        {p}有一户困难家庭，冬天连取暖都成问题
        我是残疾人，残疾人补贴一直没有到账
        家里突遭变故，想申请临时救助
        申请低保的材料交上去三个月了，一直没有消息
        {p}有流浪人员在睡觉，天冷了需要救助
        孩子得了大病，医药费负担不起
        """,
        r="""
        希望政府能帮帮我们
        请民政部门尽快审核
        """,
        a="""
        请问申请低保需要什么条件？
        """,
    ),
    "医疗服务": _topic(
        p="""
        在{p}看病，医生态度特别差
        {p}挂号太难了，早上六点排队都挂不上
        {p}的医院重复检查，乱收费
        家人在{p}做手术出了问题，医院推卸责任
        {p}的社区卫生服务中心经常缺药
        在{p}急诊等了三个小时都没有医生来看
        {p}的私人诊所没有行医资质
        在{p}打疫苗，预约系统总是约不上
        """,
        r="""
        请卫健委调查处理
        希望改善就医环境
        """,
        a="""
        请问医疗纠纷应该怎么投诉？
        """,
    ),
    "学校管理": _topic(
        p="""
        {p}的学校食堂饭菜质量差，孩子吃不饱
        孩子在{p}的学校被老师体罚了
        {p}的学校要求家长统一购买教辅资料
        孩子今年上小学，不知道住在{p}划片到哪所学校
        {p}的学校放学时间太早，家长没法接
        {p}的学校课后服务收费不透明
        {p}的学校门口上下学时段特别拥堵，没有人疏导
        {p}的幼儿园突然涨学费
        """,
        r="""
        希望教育部门调查处理
        希望学校给个合理解释
        """,
        a="""
        请问孩子入学需要准备哪些材料？
        请问非本地户籍的孩子怎么上学？
        """,
    ),
    "校外培训": _topic(
        p="""
        {p}的培训机构突然关门了，预交的学费退不了
        {p}有个补习班在居民楼里违规开展学科类培训
        {p}的培训机构一次性收了我们两年的费用
        {p}的托管班没有消防设施，几十个孩子挤在一个屋里
        {p}的培训机构承诺不满意全额退款，现在不认账
        {p}的培训机构老师没有教师资格证
        {p}周末有机构偷偷开数学英语补习班
        {p}的舞蹈班上课时孩子受伤了，机构不负责任
        """,
        r="""
        请教育部门查处
        希望帮忙退费
        """,
        a="""
        请问这个培训机构有没有办学许可？
        """,
    ),
    "治安": _topic(
        timely=True,
        p="""
        {p}最近经常丢电动车
        {p}晚上经常有人喝醉了打架
        {p}有人在出租屋里聚众赌博
        {p}有可疑人员挨家挨户敲门推销
        {p}的监控坏了好久，小偷很猖狂
        {p}有人推销保健品，专骗老人
        {p}停的车被人划了
        {p}有人深夜飙车炸街
        """,
        i="""
        大家晚上都不敢出门
        居民很没有安全感
        """,
        r="""
        请派出所加强巡逻
        希望尽快破案
        """,
        u="""
        {p}有人拿着刀在打架，已经有人受伤了
        """,
    ),
    "消防隐患": _topic(
        timely=True,
        p="""
        {p}有人从楼上拉电线下来给电动车充电
        {p}楼道里停满了电动车，还在楼道里充电
        {p}的灭火器都过期了，消防栓里面是空的
        {p}的消防通道被杂物和车辆堵死了
        {p}有个群租房住了二十多个人，存在火灾隐患
        {p}的地下室住人，里面堆满了易燃物
        {p}的小饭馆使用液化气罐，就放在门口
        {p}的安全出口被锁住了
        """,
        i="""
        万一着火后果不堪设想
        楼里住了很多老人
        """,
        r="""
        请消防部门来检查
        希望尽快整改消除隐患
        """,
        u="""
        {p}有辆电动车在楼道里冒烟了，请马上派人
        {p}的配电箱着火冒烟了
        """,
    ),
}

# Problem sentences built from a category's keyword: they tie texts to the configured keywords and
# are all that a leaf without hand-written content gets.
_KEYWORD_PROBLEMS = _lines("""
    {p}{kw}的问题一直没人管
    {p}存在{kw}的情况
    {p}{kw}的问题很严重
    反映一下{p}的{kw}问题
    {p}{kw}的问题反复出现
    {p}最近{kw}的情况越来越多
    {p}出现了{kw}的问题
    {p}的{kw}问题拖了很久都没解决
""")

# --- generic fragments ---------------------------------------------------------------------------

_GREETINGS = (
    "您好",
    "你好",
    "喂，你好",
    "您好，我想反映个问题",
    "打扰一下",
    "你好，我要反映情况",
    "领导您好",
    "12345您好",
    "麻烦问一下",
)
_TYPE_OPENINGS = {
    "投诉": ("我要投诉", "投诉一下", "实名投诉", "我要反映并投诉"),
    "咨询": ("想咨询一下", "请问一下", "咨询个事"),
    "求助": ("求助！", "实在没办法了，向你们求助", "求求你们帮帮忙"),
    "建议": ("提个建议", "我有个建议", "给政府提个建议"),
    "诉求": ("我想反映一个情况", "反映个问题", "有个事情想反映一下"),
}
# `{home}` is filled with where the resident lives or the place the appeal is about.
_HOME_OPENINGS = (
    "我是{home}的居民",
    "我家住在{home}",
    "我是{home}的业主",
    "我住在{home}",
    "我是住在{home}的租户",
    "本人住{home}",
)
_THIRD_HOME_OPENINGS = ("来电人住在{home}", "来电人系{home}居民", "来电人是{home}的业主")
_THIRD_OPENINGS = (
    "来电人反映",
    "市民来电反映",
    "来电人称",
    "诉求人反映",
    "网友留言反映",
    "来电人表示",
    "市民通过网络平台反映",
)
_URGENT_OPENINGS = ("紧急情况！", "十万火急！", "情况紧急，", "紧急求助！", "快来人！")
# Stand-ins for {p} when the appeal names no place: nothing that identifies a grid.
_VAGUE_PLACES = ("我们小区", "我家附近", "我家楼下", "小区门口", "附近", "我们这边", "路口")
_DURATIONS = (
    "已经三天了",
    "已经一个多星期了",
    "半个多月了",
    "都快一个月了",
    "从上个月开始就这样",
    "从{m}月份开始一直这样",
    "好几年了",
    "这两天一直这样",
    "昨天晚上开始的",
    "今天早上{h}点多发现的",
    "反复出现好多次了",
    "前后反映过{n}次了",
    "已经{n}天了",
    "持续{n}个多月了",
    "每年都这样",
)
_URGENT_DURATIONS = ("就在刚才", "十分钟前发现的", "现在还在持续", "刚刚发生的")
_TIMES = (
    "昨晚{h2}点多",
    "今天早上{h}点左右",
    "每天晚上{h2}点以后",
    "周末",
    "前天下午",
    "每天凌晨",
    "这几天晚上",
)
_IMPACTS = (
    "严重影响了居民的正常生活",
    "大家意见很大",
    "老人孩子出行很不方便",
    "存在很大的安全隐患",
    "给周边居民带来很大困扰",
    "邻居们都很有意见",
)
_PRIORS = (
    "之前找过社区，说不归他们管",
    "已经打过好几次电话了，一直没人处理",
    "社区说会往上反映，但一直没有下文",
    "上次反映以后来人看了一眼就走了",
    "之前在网上留言过，也没人回复",
    "找过好几个部门，都说不归自己管",
    "上次说一周内解决，到现在也没动静",
)
_REQUESTS = (
    "希望有关部门尽快处理",
    "请尽快派人来看看",
    "麻烦帮忙协调解决一下",
    "希望能给个说法",
    "请相关部门重视",
    "希望12345帮忙督促一下",
    "处理完请给我回个电话",
    "请尽快解决",
)
_COMPLAINT_REQUESTS = ("希望严肃处理相关责任人", "要求有关部门依法查处", "希望给个满意的答复")
_GENERIC_ASKS = (
    "请问这种情况应该找哪个部门？",
    "请问{kw}的问题归谁管？",
    "请问有什么办理渠道？",
    "想问一下{kw}的事情该找谁？",
)
_SUGGESTIONS = (
    "建议相关部门加强日常巡查",
    "建议把这个问题纳入整治计划",
    "建议建立长效管理机制",
    "建议多听听居民的意见",
)
_URGENT_REQUESTS = (
    "请马上派人过来！",
    "请立即处理，太危险了！",
    "请赶紧通知相关单位来抢修！",
    "请马上处理，人命关天！",
)
_STYLES, _STYLE_WEIGHTS = ("short", "medium", "long", "narrative"), (25, 45, 20, 10)
_BACKGROUNDS = (
    "我在这里住了十几年了",
    "家里有两个老人，还有一个刚上小学的孩子",
    "我们这栋楼住的大多是老年人",
    "我是上班族，每天早出晚归",
    "我们是去年才搬过来的",
    "我母亲八十多岁了，腿脚不方便",
    "我是附近的老住户了，以前从来没遇到过这种事",
)
_FEELINGS = (
    "真的很无奈",
    "实在是忍无可忍了",
    "希望政府能真正为老百姓办点实事",
    "不知道到底该找谁",
    "大家都很着急",
    "老百姓反映个问题怎么就这么难",
)
_CLOSINGS = ("谢谢", "麻烦了", "盼复", "辛苦了，谢谢", "谢谢！")
_SECOND_TOPIC = ("另外", "还有", "顺便反映一下", "再说个事")
_EXTRA = ("而且", "另外", "还有就是", "更过分的是")
_CONTACTS = ("我的电话是{phone}", "联系电话{phone}", "有事可以打我电话{phone}", "我姓{surname}，电话{phone}")
_MOBILE_PREFIXES = (
    "139",
    "138",
    "137",
    "136",
    "135",
    "150",
    "151",
    "158",
    "159",
    "186",
    "187",
    "188",
    "189",
    "177",
)
_SURNAMES = "王李张刘陈杨赵黄周吴徐孙马朱胡郭何林高罗"
_TITLE_PATTERNS = ("{q}{kw}", "关于{q}{kw}的问题", "{q}{kw}问题", "反映{q}{kw}", "{q}{kw}急需处理")
_TITLE_PATTERNS_NOPLACE = ("{kw}问题", "反映{kw}问题", "关于{kw}的{type}", "{kw}{type}", "{name}问题{type}")
# Titles that say nothing about the category ("市民来电诉求"): residents write those too, and they keep
# the title from giving the label away.
_TITLE_VAGUE = ("关于{q}的问题", "{q}有问题需要处理", "反映{q}的情况", "{type}：{q}附近")
_TITLE_VAGUE_NOPLACE = (
    "市民来电{type}",
    "反映一个情况",
    "请求有关部门处理",
    "急需解决的问题",
    "网友留言{type}",
)
# Look-alike / sound-alike substitutions, as typed with a pinyin IME in a hurry.
_TYPOS = {
    "的": "得",
    "在": "再",
    "已": "以",
    "坏": "怀",
    "楼": "搂",
    "门": "们",
    "理": "里",
    "情": "清",
    "做": "作",
    "部": "步",
    "反": "返",
    "映": "应",
    "修": "休",
    "晚": "完",
    "很": "狠",
    "到": "倒",
    "题": "提",
    "决": "绝",
    "望": "忘",
    "清": "请",
    "员": "园",
    "车": "扯",
}
# First person -> call-taker's third person, longest first.
_THIRD_PERSON = (
    ("我们", "他们"),
    ("我是", "来电人是"),
    ("我在", "来电人在"),
    ("我的", "其"),
    ("我家", "其家"),
    ("我", "来电人"),
)


# --- places --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    text: str  # as written in the appeal, e.g. "阳光小区5号楼2单元门口"
    address: str  # as typed into the address field
    home: str  # for "我家住在{home}"
    short: str  # for titles, e.g. "阳光小区"


def _building(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return f"{rng.randint(1, 30)}号楼"
    if r < 0.6:
        return f"{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元"
    if r < 0.75:
        return f"{rng.randint(1, 30)}号楼{rng.randint(1, 6)}单元{rng.randint(1, 18)}0{rng.randint(1, 4)}室"
    return f"{rng.randint(1, 30)}栋"


def _pick_name(rng: random.Random, name: str, aliases: Sequence[str], p_alias: float = 0.4) -> str:
    return rng.choice(aliases) if aliases and rng.random() < p_alias else name


class _Generator:
    def __init__(self, city: City, seed: int) -> None:
        self.city = city
        self.rng = random.Random(seed)
        self.grids: tuple[GridInfo, ...] = tuple(city.grids.values())
        self.district = city.district.name
        # Names that several places share (幸福里 in two streets): mention the street or community
        # with them more often, as residents do when asked "哪个幸福里?".
        counts = Counter(
            n
            for g in self.grids
            for p in (*g.grid.compounds, *g.grid.landmarks)
            for n in {p.name, *p.aliases}
        )
        self.shared_names = frozenset(n for n, k in counts.items() if k > 1)
        # Residents name their compound most often, then a road and house number, then a landmark.
        self.place_kinds = {
            g.grid.id: ("compound",) * 5 * bool(g.grid.compounds)
            + ("road",) * 3 * bool(g.grid.roads)
            + ("landmark",) * 2 * bool(g.grid.landmarks)
            for g in self.grids
        }
        self.topics: dict[str, Topic] = {}
        self.keywords: dict[str, tuple[str, ...]] = {}
        for leaf in city.leaf_categories:
            cat = city.category_by_id[leaf]
            self.keywords[leaf] = cat.keywords or (cat.name,)
            self.topics[leaf] = TOPICS.get(cat.name) or Topic(problems=())
        urgent_leaves = sum(1 for t in self.topics.values() if t.urgent)
        # Per-record urgent rate in categories that can be urgent, so the overall share is URGENT_SHARE.
        self.urgent_rate = min(0.5, URGENT_SHARE * len(self.topics) / urgent_leaves) if urgent_leaves else 0.0
        self.urgent_share = self.urgent_rate * urgent_leaves / max(1, len(self.topics))

    # --- places ---

    def place(self, gi: GridInfo) -> _Place | None:
        rng, g = self.rng, gi.grid
        kinds = self.place_kinds[g.id]
        if not kinds:
            return None
        kind = rng.choice(kinds)
        if kind == "compound":
            c = rng.choice(g.compounds)
            name = _pick_name(rng, c.name, c.aliases)
            building = _building(rng) if rng.random() < 0.55 else ""
            spot = rng.choice(("", "", "门口", "东门", "南门", "北门", "西门", "里面", "楼下", "地下车库"))
            text = name + (building or spot)
            place = _Place(text, c.name + building, name + building, name)
        elif kind == "road":
            r = rng.choice(g.roads)
            lo = max(r.from_no, 1)
            # Residents quote plausible numbers, not 99999 on an open-ended segment.
            no = rng.randint(lo, max(lo, min(r.to_no, r.from_no + 300)))
            name = _pick_name(rng, r.name, r.aliases, 0.3)
            others = [o for o in g.roads if o.name != r.name]
            if others and rng.random() < 0.2:
                text = f"{name}和{rng.choice(others).name}交叉口"
                return _Place(text, text, text + "附近", name)
            text = f"{name}{no}号" + rng.choice(("", "", "附近", "门口", "对面", "旁边", "一带"))
            place = _Place(text, f"{r.name}{no}号", f"{name}{no}号", name)
        else:
            lm = rng.choice(g.landmarks)
            name = _pick_name(rng, lm.name, lm.aliases)
            text = name + rng.choice(("", "门口", "附近", "旁边", "对面", "东门", "南侧", "后面"))
            place = _Place(text, lm.name, name + "附近", name)
        # Sometimes the street / community is named too; always more likely with a shared name.
        p_area = 0.6 if place.short in self.shared_names else 0.15
        if rng.random() < p_area:
            area = rng.choice((gi.street_name, gi.community_name, gi.street_name + gi.community_name))
            place = _Place(area + place.text, gi.street_name + place.address, area + place.home, place.short)
        if rng.random() < 0.25:  # some residents type the district too
            place = _Place(place.text, self.district + place.address, place.home, place.short)
        return place

    # --- fragments ---

    def _fill(self, s: str, p: str, kw: str = "") -> str:
        s = s.replace("{p}", p).replace("{kw}", kw)
        if "{" in s:  # numbers: only draw when needed (this is the hot path)
            for slot, lo, hi in (("{n}", 2, 9), ("{m}", 1, 12), ("{h}", 5, 9), ("{h2}", 9, 12)):
                if slot in s:
                    s = s.replace(slot, str(self.rng.randint(lo, hi)))
        return s

    def _phone(self) -> str:
        rng = self.rng
        digits = rng.choice(_MOBILE_PREFIXES) + "".join(rng.choice("0123456789") for _ in range(8))
        if rng.random() < 0.3:  # masked, as web forms show it
            digits = digits[:3] + "****" + digits[7:]
        return digits

    def problem(self, leaf: str, urgent: bool) -> str:
        topic, rng = self.topics[leaf], self.rng
        if urgent:
            return rng.choice(topic.urgent)
        if topic.problems and rng.random() < 0.8:
            return rng.choice(topic.problems)
        return rng.choice(_KEYWORD_PROBLEMS)

    # --- one record ---

    def record(self, leaf: str) -> dict:
        rng = self.rng
        topic = self.topics[leaf]
        cat = self.city.category_by_id[leaf]
        keywords = self.keywords[leaf]
        kw = rng.choice(keywords)
        gi = rng.choice(self.grids)
        urgent = bool(topic.urgent) and rng.random() < self.urgent_rate
        kind = rng.choice(("求助", "诉求")) if urgent else rng.choices(APPEAL_TYPES, _TYPE_WEIGHTS)[0]
        third = rng.random() < 0.25  # a call-taker's summary rather than the resident's own words

        # Where: an address field (~85%), and a place in the text for most of those.
        place = self.place(gi)
        has_address = place is not None and rng.random() >= NO_ADDRESS_SHARE
        in_text = rng.random() < 0.93 if has_address else place is not None and rng.random() < 0.4
        address = place.address if has_address and place else ""
        spot = place.text if in_text and place else rng.choice(_VAGUE_PLACES)

        template = self.problem(leaf, urgent)
        problem = self._fill(template, spot, kw)
        opening = ""
        if in_text and place and place.text not in problem:
            # The problem sentence has no slot for the place: say where one lives instead.
            opening = rng.choice(_THIRD_HOME_OPENINGS if third else _HOME_OPENINGS).replace(
                "{home}", place.home
            )
        if topic.timely and not urgent and template in topic.problems and rng.random() < 0.25:
            problem = self._fill(rng.choice(_TIMES), "") + "，" + problem

        # short: a line or two; medium: + duration / impact; long: + a second problem and previous
        # attempts; narrative: the resident's whole story (background, several problems, feelings).
        style = "short" if urgent and rng.random() < 0.5 else rng.choices(_STYLES, _STYLE_WEIGHTS)[0]
        long = style in ("long", "narrative")
        sentences: list[list[str]] = []
        if style == "narrative" and not urgent:
            sentences.append([rng.choice(_BACKGROUNDS)])
            if rng.random() < 0.5:
                problem = "具体情况是这样的：" + problem
        first = [problem]
        if urgent or (style != "short" and rng.random() < 0.6):
            durations = _URGENT_DURATIONS if urgent else _DURATIONS
            first.append(self._fill(rng.choice(durations), ""))
        sentences.append(first)
        if long and not urgent:
            n_extra = rng.randint(2, 3) if style == "narrative" else 1
            pool = [t for t in topic.problems or _KEYWORD_PROBLEMS if t != template]
            for extra in rng.sample(pool, min(n_extra, len(pool))):
                extra = self._fill(extra, rng.choice(("那边", "旁边", "附近")), rng.choice(keywords))
                sentences.append([rng.choice(_EXTRA) + "，" + extra])
        if urgent:
            pass  # no history, no feelings: someone reporting a gas leak says what and where
        elif (style != "short" and rng.random() < 0.6) or style == "narrative":
            if style == "narrative":
                sentences.append(rng.sample(topic.impacts + _IMPACTS, rng.randint(2, 3)))
            else:  # mostly the category's own impacts; the generic ones fit anything
                sentences.append(
                    [rng.choice(topic.impacts if topic.impacts and rng.random() < 0.7 else _IMPACTS)]
                )
        if not urgent and (long or (style == "medium" and rng.random() < 0.2)):
            n_prior = rng.randint(1, 3) if style == "narrative" else 1
            sentences.extend([x] for x in rng.sample(_PRIORS, n_prior))
        if style == "narrative" and not urgent:
            sentences.extend([x] for x in rng.sample(_FEELINGS, rng.randint(1, 2)))
        if not urgent and rng.random() < SECOND_TOPIC_SHARE / (1 - self.urgent_share):
            sentences.append([rng.choice(_SECOND_TOPIC) + "，" + self.other_problem(leaf)])
        if rng.random() < 0.07:
            contact = rng.choice(_CONTACTS).replace("{surname}", rng.choice(_SURNAMES))
            sentences.append([contact.replace("{phone}", self._phone())])
        request = self.request(topic, kind, urgent, kw, third)
        if request:
            sentences.append([request])
        if not third and rng.random() < 0.25:
            sentences.append([rng.choice(_CLOSINGS)])

        body = "".join(_sentence(s) for s in sentences)
        if third:
            body = _third_person(body)
            head = rng.choice(_THIRD_OPENINGS) + rng.choice(("：", "，"))
            text = head + (opening + "，" if opening else "") + body
        else:
            head = ""
            if urgent:
                head = rng.choice(_URGENT_OPENINGS)
            elif rng.random() < 0.6:
                head = rng.choice(_GREETINGS + _TYPE_OPENINGS[kind])
            if head and head[-1] not in "，！":
                head += rng.choice(("，", "，", "。", "！")) if opening or rng.random() < 0.5 else "，"
            text = head + (opening + "，" if opening else "") + body

        text = _fit(_tidy(text), rng)
        if rng.random() < TYPO_SHARE:
            text = _typo(text, rng)
        return {
            "title": self.title(cat.name, kw, kind, urgent, place if in_text else None),
            "text": text,
            "label": leaf,
            "grid": gi.grid.id,
            "address": address,
            "type": kind,
            "urgent": urgent,
        }

    def other_problem(self, leaf: str) -> str:
        """A problem sentence of another category, about no particular place (mixed-topic noise)."""
        others = [x for x in self.city.leaf_categories if x != leaf] or [leaf]
        other = self.rng.choice(others)
        return self._fill(
            self.problem(other, False), self.rng.choice(_VAGUE_PLACES), self.rng.choice(self.keywords[other])
        )

    def request(self, topic: Topic, kind: str, urgent: bool, kw: str, third: bool) -> str:
        rng = self.rng
        if urgent:
            req = rng.choice(_URGENT_REQUESTS)
        elif kind == "咨询":
            req = self._fill(rng.choice(topic.asks + _GENERIC_ASKS), "", kw)
        elif kind == "建议":
            req = rng.choice(_SUGGESTIONS + topic.requests)
        elif kind == "投诉":
            req = rng.choice(_COMPLAINT_REQUESTS + topic.requests + _REQUESTS)
        else:
            req = rng.choice(topic.requests + _REQUESTS)
        if not third:
            return req
        # A call-taker's summary: 来电人咨询/建议/希望 + the request without its own lead word.
        if "给我" in req:  # "处理完请给我回个电话"
            return "来电人要求处理后回电告知结果"
        if kind == "咨询" and not urgent:
            return "来电人咨询" + req.removeprefix("请问").removeprefix("想问一下").rstrip("？")
        if kind == "建议" and req.startswith("建议"):
            return "来电人" + req
        for lead in ("希望", "要求", "请", "麻烦"):
            req = req.removeprefix(lead)
        return rng.choice(("来电人希望", "来电人要求", "诉求人希望")) + req.rstrip("！")

    def title(self, name: str, kw: str, kind: str, urgent: bool, place: _Place | None) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            patterns = _TITLE_VAGUE if place else _TITLE_VAGUE_NOPLACE
            title = rng.choice(patterns).replace("{q}", place.short if place else "").replace("{type}", kind)
        elif place and rng.random() < 0.6:
            title = rng.choice(_TITLE_PATTERNS).replace("{q}", place.short).replace("{kw}", kw)
        else:
            title = rng.choice(_TITLE_PATTERNS_NOPLACE)
            title = title.replace("{kw}", kw).replace("{name}", name).replace("{type}", kind)
        if len(title) < MIN_TITLE:  # a short keyword: "反映井盖问题" rather than "井盖"
            title = f"反映{kw}问题" if len(kw) > 1 else f"反映{name}问题"
        if urgent:
            title = "紧急：" + title
        if len(title) > MAX_TITLE:
            title = f"{'紧急：' * urgent}{name}{kind}"
        return title.ljust(MIN_TITLE, "！")[:MAX_TITLE]


def _sentence(clauses: list[str]) -> str:
    s = "，".join(c.strip("，。") for c in clauses if c)
    return s if s[-1:] in ("？", "！", "。") else s + "。"


# A place ending in a locative ("东门", "对面") meets a template's own "附近"/"门口": keep one.
_LOCATIVES = (
    "附近",
    "门口",
    "对面",
    "旁边",
    "一带",
    "东门",
    "南门",
    "西门",
    "北门",
    "南侧",
    "后面",
    "楼下",
    "里面",
)
_DOUBLE_LOCATIVE = re.compile(f"({'|'.join(_LOCATIVES)})(?:附近|门口)")


def _tidy(text: str) -> str:
    return _DOUBLE_LOCATIVE.sub(r"\1", text)


def _third_person(s: str) -> str:
    for a, b in _THIRD_PERSON:
        s = s.replace(a, b)
    return s


def _fit(text: str, rng: random.Random) -> str:
    """Keep the text within MIN_TEXT..MAX_TEXT characters."""
    while len(text) < MIN_TEXT:
        text += rng.choice(_REQUESTS) + "。"
    if len(text) > MAX_TEXT:
        # Cut at the last full sentence that fits.
        cut = max(text.rfind(p, 0, MAX_TEXT) for p in "。！？")
        text = text[: cut + 1] if cut >= MIN_TEXT else text[:MAX_TEXT]
    return text


def _typo(text: str, rng: random.Random) -> str:
    spots = [i for i, ch in enumerate(text) if ch in _TYPOS]
    if not spots:
        return text
    i = rng.choice(spots)
    return text[:i] + _TYPOS[text[i]] + text[i + 1 :]


# --- API -----------------------------------------------------------------------------------------


def generate(city: City, per_category: int = 200, seed: int = 0) -> list[dict]:
    """`per_category` appeals for every leaf category of `city`, in random (seeded) order.

    Records: title, text, label (leaf id), grid (grid id), address ("" for ~15%), type (诉求/投诉/
    咨询/求助/建议) and urgent. Deterministic for a seed; another seed gives other texts.
    """
    gen = _Generator(city, seed)
    records = [gen.record(leaf) for leaf in city.leaf_categories for _ in range(per_category)]
    gen.rng.shuffle(records)
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> int:
    """Write one JSON object per line (UTF-8, Chinese unescaped); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m services.classifier.corpus", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--per-category", type=int, default=200, help="appeals per leaf category (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--city",
        default=None,
        help="city configuration folder (default: CITY_CONFIG_DIR, else the demo city)",
    )
    args = ap.parse_args(argv)
    if args.per_category < 0:
        ap.error("--per-category must be >= 0")
    folder = args.city
    if folder is None:
        from shared.settings import get_settings  # here: reading settings needs pydantic-settings

        folder = get_settings().city_config_dir
    city = load_city(folder)
    n = write_jsonl(generate(city, args.per_category, args.seed), args.out)
    print(f"wrote {n} appeals ({len(city.leaf_categories)} categories x {args.per_category}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
